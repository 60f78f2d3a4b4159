"""Embedding and classification (reward) models through the scheduler, against
transformers on the same weights (float32, atol 1e-5): all-MiniLM-L6-v2 with
sentence-transformers' mean pooling, tiny random decoder embedders (last token) and
tiny *ForSequenceClassification models, on batches of mixed lengths, with chunked
prefill and the prefix cache where they apply."""

import dataclasses
import json
import os
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F

from rollserve.executor.pooling_model import (CAUSAL_LM_ARCHITECTURES,
                                              CLASSIFICATION_ARCHITECTURES,
                                              DECODER_EMBEDDING_ARCHITECTURES,
                                              ENCODER_ARCHITECTURES,
                                              default_embedding_model_path, pooling_spec)
from rollserve.frontend.encode_input import EncodeReqInput, normalize_encode
from rollserve.frontend.encode_manager import drop_trailing_pads
from rollserve.core.io import EmbeddingOutput, TokenizedEmbeddingReq
from rollserve.executor.models import EMBEDDING_MODEL_OF_CAUSAL_LM, POOLING_MODEL_REGISTRY
from rollserve.core.sampling_params import InvalidRequest
from rollserve.executor.attention.base import attention
from tests.executor.model_harness import KVHarness
from tests.scheduler.scheduler_harness import make_scheduler
from tests.tiny_models import tiny_config

ATOL = 1e-5
PAD = 2  # the tiny classifiers' pad_token_id (= their EOS, as in many reward models)


# ---------------------------------------------------------------- helpers
@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that outputs spread well beyond the tolerance."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        param.copy_(1 + 0.2 * noise if "norm" in name else
                    noise if "embed_tokens" in name else 0.15 * noise)


def save_tiny_pooling_checkpoint(kind: str, arch: str, out_dir: str, tokenizer_dir: str,
                                 seed: int = 0, **overrides):
    """A random tiny `arch` model saved as a real checkpoint; kind: embedding (the bare
    *Model), classification (*ForSequenceClassification) or causal_lm. Returns (dir, model)."""
    from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoTokenizer)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config(arch, len(tokenizer), **overrides)
    auto = {"embedding": AutoModel, "classification": AutoModelForSequenceClassification,
            "causal_lm": AutoModelForCausalLM}[kind]
    model = auto.from_config(config).float().eval()
    randomize(model, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir, model


def random_inputs(seed: int, lengths: List[int], low: int = 3, high: int = 2000) -> List[List[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(low, high, (n,), generator=generator).tolist() for n in lengths]


def encode_all(scheduler, inputs: List[List[int]], prefix: str = "r") -> List[EmbeddingOutput]:
    """Adds every input at once and steps the scheduler until all are answered."""
    for i, ids in enumerate(inputs):
        scheduler.add_request(TokenizedEmbeddingReq(rid=f"{prefix}{i}", input_ids=ids))
    outputs: Dict[str, EmbeddingOutput] = {}
    for _ in range(10000):
        if not scheduler.has_work():
            break
        for out in scheduler.step():
            outputs[out.rid] = out
    return [outputs[f"{prefix}{i}"] for i in range(len(inputs))]


def vectors(outputs: List[EmbeddingOutput]) -> List[torch.Tensor]:
    return [torch.tensor(out.embedding) for out in outputs]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_dir):
    """name -> (folder, transformers model) for the tiny pooling checkpoints."""
    specs = {
        "llama_embed": ("embedding", "llama", {}),
        "qwen2_embed": ("embedding", "qwen2", {}),
        "qwen3_embed": ("embedding", "qwen3", {}),
        "qwen3_causal": ("causal_lm", "qwen3", {}),
        "llama_cls": ("classification", "llama", {"num_labels": 3, "pad_token_id": PAD}),
        "qwen2_cls": ("classification", "qwen2", {"num_labels": 1}),
        "qwen3_cls": ("classification", "qwen3", {"num_labels": 2, "pad_token_id": PAD}),
    }
    root = tmp_path_factory.mktemp("tiny-pooling")
    return {name: save_tiny_pooling_checkpoint(kind, arch, os.path.join(root, name),
                                               default_model_dir, seed=i, **overrides)
            for i, (name, (kind, arch, overrides)) in enumerate(specs.items())}


# ---------------------------------------------------------------- attention
def test_non_causal_attention_sees_the_whole_sequence():
    """causal=False: every new token attends to every token of its sequence, the pooled
    prefix included; checked against softmax(q k^T) v per request."""
    harness = KVHarness(num_layers=1, num_kv_heads=2, head_dim=8)
    rows = [harness.new_request(), harness.new_request(), harness.new_request()]
    generator = torch.Generator().manual_seed(0)

    def qkv(n):
        return (torch.randn(n, 4, 8, generator=generator), torch.randn(n, 2, 8, generator=generator),
                torch.randn(n, 2, 8, generator=generator))

    q0, k0, v0 = qkv(3)  # request 0 first stores a prefix of 3 tokens
    attention(q0, k0, v0, harness.context([rows[0]], [3]), 0, 0.3, causal=False)
    lens = [5, 1, 7]
    q, k, v = qkv(sum(lens))
    out = attention(q, k, v, harness.context(rows, lens), 0, 0.3, causal=False)
    keys = [torch.cat([k0, k[:5]]), k[5:6], k[6:]]
    values = [torch.cat([v0, v[:5]]), v[5:6], v[6:]]
    start = 0
    for n, key, value in zip(lens, keys, values):
        query = q[start:start + n]  # [n, 4, 8]; heads 2h and 2h+1 share kv head h
        key, value = key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1)
        weights = torch.softmax(torch.einsum("qhd,khd->hqk", query, key) * 0.3, dim=-1)
        expected = torch.einsum("hqk,khd->qhd", weights, value)
        torch.testing.assert_close(out[start:start + n], expected, atol=1e-6, rtol=0)
        start += n


# ---------------------------------------------------------------- detection
def test_every_detected_architecture_has_a_class():
    detected = (ENCODER_ARCHITECTURES | DECODER_EMBEDDING_ARCHITECTURES
                | CLASSIFICATION_ARCHITECTURES)
    assert detected == set(POOLING_MODEL_REGISTRY)
    assert CAUSAL_LM_ARCHITECTURES == set(EMBEDDING_MODEL_OF_CAUSAL_LM)


def test_pooling_spec_from_config_and_sentence_transformers(tiny, tmp_path):
    minilm = pooling_spec(default_embedding_model_path())
    assert (minilm.kind, minilm.method, minilm.normalize, minilm.causal) == \
        ("embedding", "mean", True, False)
    assert not minilm.allows_prefix_cache and not minilm.allows_chunking
    decoder = pooling_spec(tiny["qwen2_embed"][0])
    assert (decoder.method, decoder.normalize, decoder.allows_prefix_cache) == ("last", True, True)
    reward = pooling_spec(tiny["llama_cls"][0])
    assert (reward.kind, reward.num_labels, reward.pad_token_id) == ("classification", 3, PAD)
    causal_lm = tiny["qwen3_causal"][0]
    assert pooling_spec(causal_lm) is None  # a generation model unless --is-embedding
    assert pooling_spec(causal_lm, is_embedding=True).method == "last"

    # a sentence-transformers folder chooses the pooling (here: CLS, no Normalize module)
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "config.json").write_text(open(os.path.join(causal_lm, "config.json")).read())
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    spec = pooling_spec(str(folder), is_embedding=True)
    assert (spec.method, spec.normalize, spec.allows_prefix_cache) == ("cls", False, False)

    from transformers import GPT2Config

    with pytest.raises(ValueError, match="cannot serve embeddings"):
        pooling_spec(str(folder), is_embedding=True, hf_config=GPT2Config(architectures=["GPT2LMHeadModel"]))


def test_resolve_server_args_applies_a_pooling_models_overrides(tiny):
    from rollserve.frontend.server_args import ServerArgs
    from rollserve.frontend.startup import resolve_server_args

    args = resolve_server_args(ServerArgs(model_path=default_embedding_model_path()))
    assert args.is_embedding and args.disable_radix_cache  # bidirectional: no prefix reuse
    args = resolve_server_args(ServerArgs(model_path=tiny["llama_cls"][0]))
    assert args.is_embedding and not args.disable_radix_cache
    with pytest.raises(ValueError, match="context_length"):
        resolve_server_args(ServerArgs(model_path=default_embedding_model_path(), context_length=1024))
    args = resolve_server_args(ServerArgs(model_path=tiny["qwen3_causal"][0]))
    assert not args.is_embedding
    with pytest.raises(dataclasses.FrozenInstanceError):  # frozen after start-up resolution
        args.is_embedding = True


def test_drop_trailing_pads_matches_transformers_choice():
    assert drop_trailing_pads([5, 6, PAD, PAD], PAD) == [5, 6]
    assert drop_trailing_pads([5, PAD, 6], PAD) == [5, PAD, 6]
    assert drop_trailing_pads([PAD, PAD, PAD], PAD) == [PAD]  # transformers takes index 0
    assert drop_trailing_pads([7], PAD) == [7]


def test_encode_request_normalization():
    items, is_batch = normalize_encode(EncodeReqInput(text=["a", "b"], rid="job"), False)
    assert is_batch and [i.rid for i in items] == ["job-0", "job-1"]
    items, is_batch = normalize_encode(EncodeReqInput(input_ids=[5, 6]), False)
    assert not is_batch and items[0].input_ids == [5, 6] and items[0].field == "input_ids"
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    items, is_batch = normalize_encode(EncodeReqInput(messages=conversation), True)
    assert not is_batch and items[0].messages == conversation
    items, is_batch = normalize_encode(EncodeReqInput(messages=[conversation] * 2), True)
    assert is_batch and len(items) == 2
    bad = [(EncodeReqInput(messages=conversation), False, "messages", "/classify"),
           (EncodeReqInput(text="a", input_ids=[1]), False, "input_ids", "exactly one"),
           (EncodeReqInput(text=["a", ""]), False, "text", "input 1 is empty"),
           (EncodeReqInput(text=["a", "b"], rid=["x", "x"]), False, "rid", "distinct"),
           (EncodeReqInput(messages=[[]]), True, "messages", "empty"),
           (EncodeReqInput(messages=[{"role": "user", "content": 3}]), True, "messages", "string")]
    for req, allow_messages, field, says in bad:
        with pytest.raises(InvalidRequest, match=says) as error:
            normalize_encode(req, allow_messages)
        assert error.value.field == field


# ---------------------------------------------------------------- MiniLM
def test_minilm_matches_sentence_transformers_pooling():
    """Mixed lengths in one batch; a tiny chunk size must not split a bidirectional input."""
    from transformers import AutoModel, AutoTokenizer

    path = default_embedding_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["hello", "A man is eating food.", "The quick brown fox jumps over the lazy dog. " * 12,
             "Embeddings place similar sentences close together.", "x " * 300, "rollserve"]
    scheduler = make_scheduler(path, chunked_prefill_size=16, max_prefill_tokens=64)
    assert scheduler.kv.tree is None and scheduler.chunk_size is None
    outputs = encode_all(scheduler, [tokenizer.encode(t) for t in texts])

    hf = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), p=2, dim=1)
    for i, (out, got) in enumerate(zip(outputs, vectors(outputs))):
        assert out.prompt_tokens == int(batch["attention_mask"][i].sum())
        assert out.finished_reason["type"] == "length"
        torch.testing.assert_close(got, reference[i], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- decoder embedders
@pytest.mark.parametrize("name", ["llama_embed", "qwen2_embed", "qwen3_embed", "qwen3_causal"])
def test_decoder_last_token_embedding_matches_transformers(tiny, name):
    """Chunked prefill (chunks of 7) and a second wave that reuses cached prefixes."""
    folder, hf = tiny[name]
    backbone = hf.model if name.endswith("causal") else hf
    scheduler = make_scheduler(folder, chunked_prefill_size=7, is_embedding=name.endswith("causal"))
    assert scheduler.kv.tree is not None
    first = random_inputs(1, [5, 1, 19, 12])
    second = [first[2][:15] + [7, 8], first[0] + [9], first[3]]  # shared prefixes
    outputs = encode_all(scheduler, first, "a") + encode_all(scheduler, second, "b")
    assert sum(out.cached_tokens for out in outputs[len(first):]) >= 15 + 5 + 11
    for ids, got in zip(first + second, vectors(outputs)):
        with torch.no_grad():
            last = backbone(torch.tensor([ids])).last_hidden_state[0, -1]
        torch.testing.assert_close(got, F.normalize(last, p=2, dim=0), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- classifiers
@pytest.mark.parametrize("name", ["llama_cls", "qwen2_cls", "qwen3_cls"])
def test_sequence_classification_matches_transformers(tiny, name):
    """Scores of the last non-pad token (trailing pads dropped as the tokenizer manager does),
    with chunked prefill and the prefix cache."""
    folder, hf = tiny[name]
    pad = hf.config.pad_token_id
    inputs = random_inputs(2, [6, 23, 1, 9])
    if pad is not None:
        inputs += [inputs[1] + [pad, pad], [pad, pad, pad], inputs[0][:3] + [pad] + inputs[0][3:]]
    scheduler = make_scheduler(folder, chunked_prefill_size=8)
    sent = [drop_trailing_pads(ids, pad) if pad is not None else ids for ids in inputs]
    outputs = encode_all(scheduler, sent)
    assert outputs[-1].cached_tokens > 0 or pad is None
    for ids, got in zip(inputs, vectors(outputs)):
        with torch.no_grad():
            reference = hf(torch.tensor([ids])).logits[0]
        assert got.shape == (hf.config.num_labels,)
        torch.testing.assert_close(got, reference, atol=ATOL, rtol=0)


def test_aborted_embedding_request_reports_no_vector(tiny):
    scheduler = make_scheduler(tiny["qwen2_cls"][0])
    scheduler.add_request(TokenizedEmbeddingReq(rid="gone", input_ids=[5, 6, 7]))
    (out,) = scheduler.abort("gone")
    assert out.embedding is None and out.finished_reason["type"] == "abort"
    assert not scheduler.has_work()


# ---------------------------------------------------------------- rollserve.Engine
def test_engine_classify_and_encode(tiny):
    """The in-process Engine on a reward model: classify works; encode and generate are refused."""
    import rollserve

    folder, hf = tiny["qwen3_cls"]
    inputs = random_inputs(3, [4, 11])
    with rollserve.Engine(model_path=folder, max_total_tokens=4096) as engine:
        results = engine.classify(input_ids=inputs)
        single = engine.classify(input_ids=inputs[0])
        assert engine.get_model_info()["is_generation"] is False
        with pytest.raises(InvalidRequest, match="use /classify"):
            engine.encode(input_ids=inputs[0])
        with pytest.raises(InvalidRequest, match="is for classification"):
            engine.generate(input_ids=inputs[0])
    for ids, result in zip(inputs, results):
        with torch.no_grad():
            reference = hf(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(torch.tensor(result["scores"]), reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.tensor(single["scores"]), torch.tensor(results[0]["scores"]),
                               atol=ATOL, rtol=0)
