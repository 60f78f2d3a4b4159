"""When is a checkpoint folder whole (#26 item 1), and which training layouts can never be
loaded as they are (#26 item 6)."""

import json
import os

import torch

from rollserve.eval.checkpoints import DEFAULT_PATTERNS, Checkpoint, compile_patterns, model_dir, step_of
from rollserve.eval.completeness import (CHANGING, COMPLETE, INCOMPLETE, NOT_READY, NOT_SCORABLE,
                                         Completeness, weight_file_problem, weights_state)


def save_weights(path, rows=64):
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({"a": torch.ones(rows, 16), "b": torch.zeros(rows)}, path)


def hf_folder(path, rows=64):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "llama"}, f)
    save_weights(os.path.join(path, "model.safetensors"), rows)
    return path


def cut(path, keep):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:keep])
    return len(data)


def test_writer_paused_mid_file_is_incomplete_not_complete(tmp_path):
    ckpt = Checkpoint(1, "checkpoint-1", hf_folder(str(tmp_path / "checkpoint-1")))
    weights = os.path.join(ckpt.path, "model.safetensors")
    full = cut(weights, 3000)  # the writer stopped here for a while
    check = Completeness()
    assert check.state(ckpt).kind == CHANGING
    state = check.state(ckpt)  # unchanged on the second look: the old rule said complete
    assert state.kind == INCOMPLETE
    assert f"holds 3,000 of the {full:,} bytes its header promises" in state.detail
    save_weights(weights)  # the writer finished
    assert check.state(ckpt).kind == CHANGING
    done = check.state(ckpt)
    assert done.kind == COMPLETE and done.files != state.files


def test_cut_inside_the_header_and_torch_zip_without_end_record(tmp_path):
    weights = str(tmp_path / "model.safetensors")
    save_weights(weights)
    cut(weights, 20)
    assert "inside its header" in weight_file_problem(weights)
    cut(weights, 5)
    assert "not even its header length" in weight_file_problem(weights)
    binary = str(tmp_path / "pytorch_model.bin")
    torch.save({"a": torch.ones(256, 16)}, binary)
    assert weight_file_problem(binary) is None
    cut(binary, 4000)
    assert "without its end record" in weight_file_problem(binary)


def test_shards_named_k_of_n_wait_for_all_of_them(tmp_path):
    folder = str(tmp_path)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write("{}")
    save_weights(os.path.join(folder, "model-00001-of-00002.safetensors"))
    kind, why = weights_state(folder)  # the index is written last by save_pretrained
    assert kind == INCOMPLETE and "1 of 2 shards" in why
    save_weights(os.path.join(folder, "model-00002-of-00002.safetensors"))
    assert weights_state(folder) == (COMPLETE, "")
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write('{"model_type": ')  # cut short
    assert weights_state(folder)[0] == INCOMPLETE


def test_openrlhf_hf_folder_matches_by_default():
    patterns = compile_patterns(DEFAULT_PATTERNS)
    assert step_of("global_step40_hf", patterns) == 40
    assert step_of("global_step_40_hf", patterns) == 40
    assert step_of("global_step40", patterns) == 40


def test_verl_fsdp_checkpoint_is_not_scorable_with_the_merge_command(tmp_path):
    step = tmp_path / "global_step_5"
    actor = step / "actor"
    os.makedirs(actor / "huggingface")
    torch.save({"w": torch.ones(2)}, str(actor / "model_world_size_2_rank_0.pt"))
    torch.save({"w": torch.ones(2)}, str(actor / "model_world_size_2_rank_1.pt"))
    torch.save({}, str(actor / "optim_world_size_2_rank_0.pt"))
    (actor / "fsdp_config.json").write_text('{"FSDP_version": 2, "world_size": 2}')
    (actor / "huggingface" / "config.json").write_text('{"model_type": "qwen2"}')
    ckpt = Checkpoint(5, step.name, str(step))
    check = Completeness()
    check.state(ckpt)
    state = check.state(ckpt)
    assert state.kind == NOT_SCORABLE
    assert (f"python -m verl.model_merger merge --backend fsdp --local_dir {actor} "
            f"--target_dir {actor / 'huggingface'}") in state.detail
    assert "save_contents=['model','optimizer','extra','hf_model']" in state.detail
    # merged (or saved with hf_model): the HF folder is what gets loaded
    save_weights(str(actor / "huggingface" / "model.safetensors"))
    check.state(ckpt)
    assert check.state(ckpt).kind == COMPLETE
    assert model_dir(str(step)) == str(actor / "huggingface")


def test_deepspeed_shards_and_plain_training_state(tmp_path):
    ds = tmp_path / "global_step10"
    os.makedirs(ds)
    torch.save({}, str(ds / "mp_rank_00_model_states.pt"))
    torch.save({}, str(ds / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    check = Completeness()
    ckpt = Checkpoint(10, ds.name, str(ds))
    check.state(ckpt)
    state = check.state(ckpt)
    assert state.kind == NOT_SCORABLE and "--save_hf_ckpt" in state.detail
    other = tmp_path / "checkpoint-3"
    os.makedirs(other)
    (other / "optimizer.pt").write_bytes(b"x")
    ckpt = Checkpoint(3, other.name, str(other))
    check.state(ckpt)
    assert check.state(ckpt).kind == NOT_READY  # unknown: maybe still to come
