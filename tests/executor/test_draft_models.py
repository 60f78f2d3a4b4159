"""Draft heads under tensor parallelism, built as one rank of a group (parallel_state.as_rank:
construction and loading, no collective): each rank holds its rows of the head's split
projections and its KV heads; a head the ranks cannot split is refused naming the flag."""

import pytest
import torch
from safetensors.torch import load_file

from rollserve.executor.draft_models import load_draft_model
from rollserve.executor.model_loader import load_model
from rollserve.executor.parallel_state import as_rank
from tests.scheduler.draft_checkpoints import save_eagle3_head, save_eagle_head


@pytest.fixture(scope="module")
def target(tiny_models):
    return load_model(tiny_models["llama"], torch.float32, "cpu")  # 4 query heads, 2 KV heads


@pytest.mark.parametrize("algorithm,layer", [("EAGLE", "layers.0"), ("EAGLE3", "midlayer")])
@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_holds_its_rows_of_the_heads_layer(tiny_models, tmp_path, target, algorithm,
                                                     layer, rank):
    save = save_eagle_head if algorithm == "EAGLE" else save_eagle3_head
    head = save(tiny_models["llama"], str(tmp_path / "head"))
    full = load_file(f"{head}/model.safetensors")
    with as_rank(rank, 2):
        draft = load_draft_model(algorithm, head, target, torch.float32, "cpu")
    module = draft.layers[0] if algorithm == "EAGLE" else draft.midlayer
    q, k = full[f"{layer}.self_attn.q_proj.weight"], full[f"{layer}.self_attn.k_proj.weight"]
    dq, dk = q.shape[0] // 2, k.shape[0] // 2
    qkv = module.self_attn.qkv_proj.weight
    assert torch.equal(qkv[:dq], q[rank * dq:(rank + 1) * dq])
    assert torch.equal(qkv[dq:dq + dk], k[rank * dk:(rank + 1) * dk])
    down = full[f"{layer}.mlp.down_proj.weight"]
    cols = down.shape[1] // 2
    assert torch.equal(module.mlp.down_proj.weight, down[:, rank * cols:(rank + 1) * cols])
    assert torch.equal(draft.fc.weight, full["fc.weight"])  # replicated
    assert draft.kv_layout() == (1, module.self_attn.head_dim)  # one of the two KV heads


def test_a_head_the_ranks_cannot_split_is_refused_naming_the_flag(tiny_models, tmp_path, target):
    head = save_eagle_head(tiny_models["llama"], str(tmp_path / "head"))
    with as_rank(0, 3), pytest.raises(ValueError, match="^speculative_draft_model_path: .*tp_size 3"):
        load_draft_model("EAGLE", head, target, torch.float32, "cpu")
