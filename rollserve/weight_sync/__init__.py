"""Weight updates into a running engine, validated whole before anything is written.

    validate.py          names, shapes, dtypes against the model's checkpoint_spec; safetensors headers
    disk.py              update_weights_from_disk: stream a checkpoint file by file into the parameters
    tensor_transport.py  buckets for update_weights_from_tensor (CUDA IPC, safetensors bytes or file)
    distributed.py       the trainer <-> engine torch.distributed group and its broadcasts
    vllm_group.py        the engine's end of vLLM's own weight-transfer group (nccl_ctypes.py: NCCL via ctypes)
    memory.py            release/resume_memory_occupation (tags "weights", "kv_cache")
    service.py           the scheduler process's control calls (CONTROL_CALLS), run between steps
    control.py           the front process's calls, shared by Engine (engine_api.py) and HTTP (http_routes.py)
"""
