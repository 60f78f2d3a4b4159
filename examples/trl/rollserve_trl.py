"""What TRL's server mode needs besides rollserve's URL, on a machine without vLLM
(a CPU trainer). A GPU trainer with vLLM installed needs none of this: rollserve's engine
joins vLLM's own weight-transfer group (rollserve/weight_sync/vllm_group.py).

TRL's GRPOTrainer(use_vllm=True, vllm_mode="server") talks to its generation server
over HTTP through trl.generation.vllm_client.VLLMClient, and rollserve serves those
calls as vLLM does (api/trl_routes.py). Two things in TRL still reach for vLLM itself:

1. TRL refuses to start server mode unless the `vllm` package imports
   (`is_vllm_available()`), though the HTTP client uses none of it; vLLM's wheels need
   CUDA, so a CPU trainer cannot install it.
2. The trainer's end of the weight push is vLLM's NCCL code (`trainer_init`,
   `packed_nccl_broadcast_producer`), and `init_communicator` refuses a non-CUDA device.

`use_rollserve_weight_sync()` answers both for this process: TRL's availability checks
see vLLM, and its client opens the weight push with rollserve's helpers of the same
names and arguments (rollserve.weight_sync.trl_trainer / packed: gloo on CPU, NCCL on
CUDA), which the engine side speaks; its init_info says "group": "torch" so the engine
joins that group, not vLLM's. Every HTTP call, the trainer and the loss stay TRL's.
"""

from __future__ import annotations

import atexit
from concurrent.futures import ThreadPoolExecutor


def use_rollserve_weight_sync(backend=None) -> None:
    import trl.generation.vllm_client as vllm_client
    import trl.generation.vllm_generation as vllm_generation

    from rollserve.weight_sync.packed import packed_broadcast_producer
    from rollserve.weight_sync.trl_trainer import trainer_init

    available = lambda *args, **kwargs: True  # noqa: E731  (see 1. above)
    vllm_client.is_vllm_available = available
    vllm_generation.is_vllm_available = available
    vllm_client._HAS_STATEFUL_TRAINER_ENGINE = True
    vllm_client.open_trainer_endpoint = lambda info: trainer_init(info, backend=backend)
    vllm_client.packed_nccl_broadcast_producer = packed_broadcast_producer

    def init_communicator(self, device=0):
        """VLLMClient.init_communicator's steps without its CUDA-only guard."""
        if self.get_server_info()["weight_transfer_config"] is None:
            raise RuntimeError(f"{self.base_url} has no weight-transfer engine")
        init_info = {"master_address": "127.0.0.1" if self.host in ("localhost", "127.0.0.1")
                     else self.host, "master_port": self.group_port, "rank_offset": 1,
                     "world_size": self.get_world_size() + 1, "packed": True,
                     "group": "torch"}  # rollserve's helpers, not vLLM's PyNccl
        if backend:
            init_info["backend"] = backend
        with ThreadPoolExecutor(max_workers=1) as executor:
            future = executor.submit(self._post, f"{self.base_url}/init_weight_transfer_engine",
                                     json={"init_info": init_info})
            self.communicator = vllm_client.open_trainer_endpoint(init_info)
            future.result()
        atexit.register(self.close_communicator)

    vllm_client.VLLMClient.init_communicator = init_communicator
