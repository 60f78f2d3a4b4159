"""Speculative decoding's CUDA graphs on the GPU (decode graphs returning a draft model's hidden
states, chain verify graphs, the draft's chain-step graphs) against the same server with
--disable-cuda-graph: NGRAM and EAGLE/EAGLE3 chains, greedy tokens identical and logprobs close,
in float32 and bfloat16, through the overlap scheduler (CUDA's default)."""

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

from rollserve.core.tokenizer import eos_token_ids, load_tokenizer  # noqa: E402
from rollserve.executor.model_runner import ModelRunner  # noqa: E402
from rollserve.frontend.server_args import ServerArgs  # noqa: E402
from rollserve.scheduler.overlap_scheduler import make_scheduler  # noqa: E402
from tests.scheduler.conftest import heads  # noqa: E402,F401 (the draft-head fixture)
from tests.scheduler.scheduler_harness import request, run_all  # noqa: E402
from tests.scheduler.test_speculative import repetitive_requests  # noqa: E402

LOGPROB_TOL = {"float32": 2e-3, "bfloat16": 0.1}


def gpu_spec_scheduler(path, algorithm, draft, dtype, graphs):
    args = ServerArgs(model_path=path, device="cuda", dtype=dtype, max_total_tokens=8000,
                      context_length=1024, cuda_graph_bs=[1, 2, 4, 8, 16],
                      disable_cuda_graph=not graphs, speculative_algorithm=algorithm,
                      speculative_draft_model_path=draft, speculative_num_draft_tokens=4,
                      speculative_num_steps=3, speculative_eagle_topk=1,
                      speculative_ngram_max_bfs_breadth=1)
    config = args.scheduler_config()
    runner = ModelRunner(config.executor)
    tokenizer = load_tokenizer(path)
    return make_scheduler(config, runner, tokenizer, eos_token_ids(path, tokenizer))


def requests():
    msgs = repetitive_requests(1)  # penalties, stop ids, logprobs, n > 1
    msgs += [request([7 + k, 11, 13, 17 + k] * 3, rid=f"g{k}", temperature=0, max_new_tokens=20,
                     ignore_eos=True, return_logprob=True) for k in range(9)]
    return msgs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("algorithm", ["NGRAM", "EAGLE", "EAGLE3"])
def test_graph_replay_equals_eager(tiny_models, heads, algorithm, dtype):  # noqa: F811
    path = tiny_models["llama"]
    draft = heads[algorithm.lower()] if algorithm != "NGRAM" else None
    want = run_all(gpu_spec_scheduler(path, algorithm, draft, dtype, graphs=False), requests())
    spec = gpu_spec_scheduler(path, algorithm, draft, dtype, graphs=True)
    runner = spec.runner
    assert runner.graph_runner is not None and not runner.graph_runner.eager
    assert runner.verify_graph_runner is not None and not runner.verify_graph_runner.eager
    got = run_all(spec, requests())
    assert runner.verify_graph_runner.replays > 0
    if algorithm != "NGRAM":
        assert runner.graph_runner.hidden_capture is runner.hidden_capture is not None
        assert spec.drafter.draft.chain_graphs is not None
        assert spec.drafter.draft.chain_graphs.replays > 0
    tol = LOGPROB_TOL[dtype]
    for rid, w in want.items():
        g = got[rid]
        if dtype == "float32":  # bfloat16 rounding may flip a near-tie: logprobs only
            assert (g.output_ids, g.finished_reason) == (w.output_ids, w.finished_reason), rid
        same = 0
        for (gv, gt), (wv, wt) in zip(g.output_logprobs, w.output_logprobs):
            if gt != wt:
                break  # past a flipped token the two runs continue differently
            same += 1
            assert gv is None or abs(gv - wv) < tol, rid
        assert same > 0 or not w.output_logprobs
