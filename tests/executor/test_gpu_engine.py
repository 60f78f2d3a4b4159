"""The whole engine on the GPU (Triton kernels, CUDA graphs, overlap scheduling) against
transformers: greedy tokens equal in float32, log-probabilities close in bfloat16."""

import importlib
import random

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config  # noqa: E402

from rollserve.bench.synthetic_model import save_synthetic_tokenizer  # noqa: E402
from rollserve.frontend.server_args import ServerArgs  # noqa: E402
from rollserve.executor.model_runner import ModelRunner  # noqa: E402
from rollserve.scheduler.overlap_scheduler import OverlapScheduler, make_scheduler  # noqa: E402
from rollserve.core.tokenizer import eos_token_ids, load_tokenizer  # noqa: E402
from rollserve.executor.attention.flashinfer import flashinfer_importable  # noqa: E402
from tests.scheduler.scheduler_harness import hf_greedy, request, run_all  # noqa: E402

linear_module = importlib.import_module("rollserve.kernels.linear")  # the package exports a function `linear`

VOCAB = 1000
NEW_TOKENS = 12
# name -> (config class, dims): head dims 16, 64 and 128 reach every kernel block shape
SHAPES = {
    "llama-d16": (LlamaConfig, dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                    num_key_value_heads=2)),
    "qwen2-d16": (Qwen2Config, dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                    num_key_value_heads=2)),
    "llama-d64": (LlamaConfig, dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                    num_key_value_heads=1, head_dim=64)),
    "qwen3-d128": (Qwen3Config, dict(hidden_size=256, intermediate_size=512, num_attention_heads=8,
                                     num_key_value_heads=2, head_dim=128)),
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    for i, (name, (cls, dims)) in enumerate(SHAPES.items()):
        path = str(tmp_path_factory.mktemp(name))
        config = cls(vocab_size=VOCAB, num_hidden_layers=3, max_position_embeddings=2048,
                     eos_token_id=2, bos_token_id=1, tie_word_embeddings=False, **dims)
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_config(config).float()
        with torch.no_grad():  # sharpen the logits so greedy choices are not decided by rounding
            for p in model.parameters():
                p.mul_(3.0) if p.dim() > 1 else None
        model.save_pretrained(path)
        save_synthetic_tokenizer(path, VOCAB)
        dirs[name] = path
    return dirs


@pytest.fixture(scope="module")
def hf_models(model_dirs):
    return {name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            for name, path in model_dirs.items()}


def gpu_scheduler(path, **overrides):
    args = ServerArgs(model_path=path, device="cuda",
                      **{"dtype": "float32", "max_total_tokens": 20000, "context_length": 1024,
                         "cuda_graph_max_bs": 16, **overrides})
    config = args.scheduler_config()
    runner = ModelRunner(config.executor)
    tokenizer = load_tokenizer(path)
    return make_scheduler(config, runner, tokenizer, eos_token_ids(path, tokenizer))


def prompts(n, seed):
    rng = random.Random(seed)
    shared = [rng.randrange(3, VOCAB) for _ in range(10)]
    out = [shared + [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 60))] for _ in range(n)]
    out.append([rng.randrange(3, VOCAB) for _ in range(700)])  # several prefill chunks
    return out


MODES = {
    "graphs+overlap": {},
    "eager": {"disable_cuda_graph": True, "disable_overlap_schedule": True},
    "torch_native": {"attention_backend": "torch_native"},
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(SHAPES))
def test_greedy_tokens_equal_transformers_float32(model_dirs, hf_models, name, mode):
    scheduler = gpu_scheduler(model_dirs[name], chunked_prefill_size=256, **MODES[mode])
    if mode == "graphs+overlap":
        assert isinstance(scheduler, OverlapScheduler) and scheduler.runner.graph_runner is not None
    msgs = [request(p, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=0)
            for p in prompts(9, seed=len(name))]
    late = [request(p, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=0)
            for p in prompts(3, seed=99)]
    results = run_all(scheduler, msgs, arrivals={5: late})
    for msg in msgs + late:
        assert results[msg.rid].output_ids == hf_greedy(hf_models[name], msg.input_ids, NEW_TOKENS), msg.rid


@pytest.mark.parametrize("fusion", [False, True])
@pytest.mark.parametrize("name", list(SHAPES))
def test_single_request_greedy_equals_transformers_float32(model_dirs, hf_models, name, fusion,
                                                           monkeypatch):
    """One request alone: every decode step is one row, so the projections run as Triton
    GEMVs (inside the captured graphs, launched with PDL), with the norm and the SiLU fused in
    when ROLLSERVE_GEMV_FUSION is on."""
    monkeypatch.setattr(linear_module, "_FUSED_GEMV", fusion)
    scheduler = gpu_scheduler(model_dirs[name])
    (prompt,) = prompts(0, seed=7)
    msg = request(prompt[:40], max_new_tokens=24, min_new_tokens=24, temperature=0)
    results = run_all(scheduler, [msg])
    assert results[msg.rid].output_ids == hf_greedy(hf_models[name], msg.input_ids, 24)


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
@pytest.mark.parametrize("name", ["llama-d64", "qwen3-d128"])
def test_bfloat16_logprobs_close_to_transformers_float32(model_dirs, hf_models, name, backend):
    """Also on flashinfer (bf16 and fp16 only, so no float32 greedy run) where it is installed."""
    if backend == "flashinfer" and not flashinfer_importable():
        pytest.skip("flashinfer is not installed")
    scheduler = gpu_scheduler(model_dirs[name], dtype="bfloat16", attention_backend=backend)
    msgs = [request(p, max_new_tokens=16, temperature=0, return_logprob=True, logprob_start_len=0)
            for p in prompts(6, seed=3)]
    results = run_all(scheduler, msgs)
    diffs = []
    for msg in msgs:
        got = results[msg.rid]
        tokens = msg.input_ids + got.output_ids
        with torch.no_grad():
            logits = hf_models[name](torch.tensor([tokens])).logits[0].float()
        ref = torch.log_softmax(logits, dim=-1)[:-1].gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]
        ours = torch.tensor([v for v, _ in got.input_logprobs[1:]] + [v for v, _ in got.output_logprobs])
        assert ours.shape == ref.shape
        diffs.append((ours - ref).abs())
    diffs = torch.cat(diffs)
    print(f"\n{name} {backend} bf16 logprobs vs transformers fp32: max |diff| {diffs.max():.4f}, "
          f"mean {diffs.mean():.5f} over {diffs.numel()} tokens")
    assert diffs.mean() < 0.05 and diffs.max() < 0.5


def test_seeded_sampling_is_reproducible_with_overlap(model_dirs):
    def run():
        scheduler = gpu_scheduler(model_dirs["llama-d64"], dtype="bfloat16")
        msgs = [request(p, rid=f"s{i}", max_new_tokens=20, temperature=0.9, top_p=0.9, top_k=50,
                        min_p=0.01, seed=i) for i, p in enumerate(prompts(5, seed=4))]
        return {rid: r.output_ids for rid, r in run_all(scheduler, msgs).items()}

    first = run()
    assert first == run()
    assert len({tuple(v) for v in first.values()}) > 1
