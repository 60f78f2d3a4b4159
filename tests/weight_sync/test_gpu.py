"""Weight sync with the engine on a GPU: CUDA IPC buckets, memory release with CUDA graphs
dropped and captured again, the same through torch_memory_saver (addresses kept), and a
group broadcast (NCCL across two GPUs, else gloo) that comes late while the engine generates."""

from __future__ import annotations

import threading
import time

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

import rollserve  # noqa: E402
from rollserve.api.server import free_port  # noqa: E402
from rollserve.weight_sync import distributed  # noqa: E402
from rollserve.weight_sync.tensor_transport import local_bucket  # noqa: E402
from tests.weight_sync.conftest import PROMPT_IDS, hf_greedy, hf_model, state_dict_of  # noqa: E402

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory) -> str:
    """A tokenizer of SmolLM2's vocabulary size for the tiny checkpoints: the GPU machine has
    no default-model package, and these tests pass token ids only."""
    from rollserve.bench.synthetic_model import save_synthetic_tokenizer

    path = str(tmp_path_factory.mktemp("tokenizer"))
    save_synthetic_tokenizer(path, 49152)
    return path


@pytest.fixture(scope="module")
def engine(ckpts):
    with rollserve.Engine(ckpts["A"], device="cuda", dtype="float32", max_total_tokens=4096,
                          log_level="warning") as eng:
        yield eng


@pytest.fixture(scope="module")
def reference(ckpts):
    return {name: hf_greedy(hf_model(path), PROMPT_IDS, 8) for name, path in ckpts.items()}


def greedy(engine):
    return engine.generate(input_ids=PROMPT_IDS, sampling_params=GREEDY)["output_ids"]


def test_cuda_ipc_buckets(engine, ckpts, reference):
    assert engine.update_weights_from_disk(ckpts["A"])["success"]
    named = [(n, t.cuda()) for n, t in state_dict_of(ckpts["B"]).items()]
    with local_bucket(named[:3]) as payload:
        assert payload.startswith("cuda_ipc:")
    assert engine.update_weights_from_tensor(named[:10], flush_cache=False)["success"]
    assert engine.update_weights_from_tensor(named[10:], weight_version="ipc")["success"]
    assert greedy(engine) == reference["B"]


def test_release_resume_keeps_answers(engine, ckpts, reference):
    assert engine.update_weights_from_disk(ckpts["B"])["success"]
    for tags in (None, ["kv_cache"], ["weights"]):
        assert engine.release_memory_occupation(tags)["success"]
        assert engine.resume_memory_occupation(tags)["success"]
        assert greedy(engine) == reference["B"], tags


def test_group_broadcast(engine, ckpts, reference):
    assert engine.update_weights_from_disk(ckpts["A"])["success"]
    two_gpus = torch.cuda.device_count() >= 2
    backend = "nccl" if two_gpus else "gloo"
    device = "cuda:1" if two_gpus else "cpu"
    if two_gpus:
        torch.cuda.set_device(1)
    port, answers = free_port(), {}
    joining = threading.Thread(target=lambda: answers.update(init=engine.init_weights_update_group(
        "127.0.0.1", port, 1, 2, "gpu-sync", backend)))
    joining.start()
    group = distributed.init_custom_process_group(backend, "127.0.0.1", port, 2, 0, "gpu-sync")
    joining.join()
    assert answers["init"]["success"], answers["init"]
    try:
        named = [(n, t.to(device)) for n, t in state_dict_of(ckpts["B"]).items()]
        receiving = threading.Thread(target=lambda: answers.update(update=engine.update_weights_from_distributed(
            [n for n, _ in named], [str(t.dtype) for _, t in named], [list(t.shape) for _, t in named],
            "gpu-sync", load_format=distributed.FLATTENED_BUCKET)))
        receiving.start()
        # the receive is posted on a stream of its own: the forward steps do not wait behind it
        time.sleep(0.5)
        assert greedy(engine) == reference["A"]
        assert receiving.is_alive(), "the update answered before the trainer broadcast"
        distributed.broadcast_named_tensors(group, named, distributed.FLATTENED_BUCKET)
        receiving.join()
        assert answers["update"]["success"], answers["update"]
    finally:
        answer = distributed.destroy_group_with_engine(
            group, lambda: engine.destroy_weights_update_group("gpu-sync"))
        assert answer["success"], answer
    assert greedy(engine) == reference["B"]


@pytest.fixture(scope="module")
def saver_engine(ckpts):
    pytest.importorskip("torch_memory_saver")
    with rollserve.Engine(ckpts["B"], device="cuda", dtype="float32", max_total_tokens=1 << 20,
                          enable_memory_saver=True, log_level="warning") as eng:
        yield eng


def _kv_pool_bytes(path: str, tokens: int) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4 * tokens


def test_memory_saver_release_frees_and_resume_restores(saver_engine, ckpts, reference):
    tokens = saver_engine.get_server_info()["max_total_num_tokens"]
    kv_bytes = _kv_pool_bytes(ckpts["B"], tokens)
    assert greedy(saver_engine) == reference["B"]
    free_before = torch.cuda.mem_get_info()[0]
    assert saver_engine.release_memory_occupation()["success"]
    freed = torch.cuda.mem_get_info()[0] - free_before
    assert freed >= 0.9 * kv_bytes, (freed, kv_bytes)
    assert saver_engine.resume_memory_occupation()["success"]
    assert torch.cuda.mem_get_info()[0] <= free_before + 0.1 * kv_bytes
    assert greedy(saver_engine) == reference["B"]  # weights back from the CPU backup
    for tags in (["kv_cache"], ["weights"]):
        assert saver_engine.release_memory_occupation(tags)["success"]
        assert saver_engine.resume_memory_occupation(tags)["success"]
        assert greedy(saver_engine) == reference["B"], tags


def test_memory_saver_then_update_from_disk(saver_engine, ckpts, reference):
    assert saver_engine.release_memory_occupation(["kv_cache"])["success"]
    assert saver_engine.update_weights_from_disk(ckpts["A"])["success"]
    assert saver_engine.resume_memory_occupation(["kv_cache"])["success"]
    assert greedy(saver_engine) == reference["A"]
