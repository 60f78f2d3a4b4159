"""Checkpoint validation from headers alone, and streaming a valid one into a live model."""

from __future__ import annotations

import os

import pytest
import torch

from rollserve.executor.model_loader import load_model
from rollserve.weight_sync.disk import load_checkpoint_files, validate_checkpoint
from rollserve.weight_sync.validate import TensorInfo, WeightUpdateError, check_tensor_infos
from tests.tiny_models import save_tiny_checkpoint
from tests.weight_sync.conftest import broken_copy, sharded_copy, state_dict_of


@pytest.fixture(scope="module")
def model(ckpts):
    return load_model(ckpts["A"], torch.float32, "cpu")


def snapshot(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_unchanged(model, before: dict) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("kind, named", [
    ("missing", "model.layers.1.mlp.up_proj.weight"),
    ("extra", "model.layers.7.mlp.surprise.weight"),
    ("shape", "model.layers.0.self_attn.k_proj.weight"),
    ("truncated", "model.safetensors"),
    ("corrupt", "model.safetensors"),
])
def test_broken_checkpoint_is_refused_naming_the_problem(model, ckpts, tmp_path, kind, named):
    path = broken_copy(ckpts["A"], str(tmp_path / kind), kind)
    before = snapshot(model)
    with pytest.raises(WeightUpdateError) as info:
        validate_checkpoint(model, path, "auto")
    assert named in str(info.value)
    assert_unchanged(model, before)


def test_sharded_checkpoint_streams_into_fused_parameters(model, ckpts, tmp_path):
    path = sharded_copy(ckpts["B"], str(tmp_path / "sharded"))
    files = validate_checkpoint(model, path, "auto")
    assert len(files) == 2
    assert load_checkpoint_files(model, files) == len(model.checkpoint_spec())
    expected = state_dict_of(ckpts["B"])
    qkv = model.model.layers[0].self_attn.qkv_proj.weight
    k_rows = model.model.layers[0].self_attn.qkv_proj.shard_rows()["k_proj"]
    assert torch.equal(qkv[k_rows], expected["model.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(model.lm_head.weight, expected["lm_head.weight"])
    load_checkpoint_files(model, validate_checkpoint(model, ckpts["A"], "auto"))  # back to A


def test_missing_shard_file_is_named(model, ckpts, tmp_path):
    path = sharded_copy(ckpts["A"], str(tmp_path / "sharded"))
    os.unlink(os.path.join(path, "model-00002-of-00002.safetensors"))
    with pytest.raises(WeightUpdateError, match="model-00002-of-00002.safetensors"):
        validate_checkpoint(model, path, "auto")


def test_not_a_directory_and_no_weights(model, tmp_path):
    with pytest.raises(WeightUpdateError, match="not a directory"):
        validate_checkpoint(model, str(tmp_path / "nowhere"), "auto")
    with pytest.raises(WeightUpdateError, match="no weight files"):
        validate_checkpoint(model, str(tmp_path), "auto")


def test_dtypes_floating_cast_integer_refused(model):
    spec = model.checkpoint_spec()
    name = "model.norm.weight"
    shape = spec[name][0]
    check_tensor_infos([TensorInfo(name, shape, torch.bfloat16, "bucket 0")], spec,
                       model.skips_checkpoint_name, "M", require_all=False)
    with pytest.raises(WeightUpdateError, match="model.norm.weight.*dtype"):
        check_tensor_infos([TensorInfo(name, shape, torch.int64, "bucket 0")], spec,
                           model.skips_checkpoint_name, "M", require_all=False)
    with pytest.raises(WeightUpdateError, match="appears twice"):
        check_tensor_infos([TensorInfo(name, shape, torch.float32, "bucket 0"),
                            TensorInfo(name, shape, torch.float32, "bucket 1")], spec,
                           model.skips_checkpoint_name, "M", require_all=False)


def test_bfloat16_checkpoint_is_cast_into_float32_model(model, ckpts, tmp_path, default_model_dir):
    path = save_tiny_checkpoint("llama", str(tmp_path / "bf16"), default_model_dir, seed=1,
                                dtype=torch.bfloat16)
    load_checkpoint_files(model, validate_checkpoint(model, path, "auto"))
    expected = state_dict_of(path)["model.norm.weight"].float()
    assert model.model.norm.weight.dtype == torch.float32
    assert torch.equal(model.model.norm.weight, expected)
    load_checkpoint_files(model, validate_checkpoint(model, ckpts["A"], "auto"))


def test_tied_embeddings_need_no_lm_head(tmp_path, default_model_dir):
    path = save_tiny_checkpoint("llama", str(tmp_path / "tied"), default_model_dir, seed=2,
                                tie_word_embeddings=True)
    assert "lm_head.weight" not in state_dict_of(path)
    tied = load_model(path, torch.float32, "cpu")
    files = validate_checkpoint(tied, path, "auto")
    assert load_checkpoint_files(tied, files) == len(tied.checkpoint_spec())
    # an lm_head.weight in a tied checkpoint is skipped, not refused
    infos = [TensorInfo("lm_head.weight", (1, 1), torch.float32, "bucket 0")]
    check_tensor_infos(infos, tied.checkpoint_spec(), tied.skips_checkpoint_name, "M",
                       require_all=False)
