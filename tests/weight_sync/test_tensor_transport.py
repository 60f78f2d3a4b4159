"""Serialized buckets for update_weights_from_tensor, and the flattened-bucket layout."""

from __future__ import annotations

import base64
import os

import pytest
import torch

from rollserve.weight_sync.distributed import BUCKET_ALIGN_BYTES, bucket_layout, parse_dtype
from rollserve.weight_sync.tensor_transport import (PayloadError, deserialize_named_tensors,
                                                    local_bucket, serialize_named_tensors)


def sample_tensors():
    base = torch.randn(6, 8)
    return [("a.f32", torch.randn(3, 4)), ("b.bf16", torch.randn(5).bfloat16()),
            ("c.f16", torch.randn(2, 2).half()), ("d.int", torch.arange(7)),
            ("e.transposed", base.t()), ("f.view", base[1:3]), ("g.same", base[1:3]),
            ("h.empty", torch.zeros(0, 4))]


def assert_same(named, out) -> None:
    out = dict(out)
    assert set(out) == {n for n, _ in named}
    for name, tensor in named:
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape, name
        assert torch.equal(out[name], tensor), name


def test_round_trip_keeps_names_dtypes_shapes_values():
    named = sample_tensors()
    assert_same(named, deserialize_named_tensors(serialize_named_tensors(named)))


def test_local_bucket_is_a_shared_memory_file_removed_afterwards():
    named = sample_tensors()
    with local_bucket(named) as payload:
        kind, _, path = payload.partition(":")
        assert kind == "safetensors_file" and os.path.exists(path)
        assert_same(named, deserialize_named_tensors(payload))
    assert not os.path.exists(path)
    with pytest.raises(PayloadError, match="cannot be mapped"):
        deserialize_named_tensors(payload)


def test_string_form_is_prefixed_base64():
    payload = serialize_named_tensors([("x", torch.ones(2))])
    kind, _, body = payload.partition(":")
    assert kind == "safetensors"
    base64.b64decode(body, validate=True)


@pytest.mark.parametrize("payload, message", [
    ("no prefix here", "must start with"),
    ("pickle:abc", "unknown bucket format"),
    ("safetensors:***", "not valid base64"),
    ("safetensors:" + base64.b64encode(b"\x10\x00\x00\x00\x00\x00\x00\x00{}").decode(), "cannot be read"),
    ("cuda_ipc:[{\"name\": 1}]", "cuda_ipc bucket cannot be opened"),
    ("safetensors:é", "ASCII"),
])
def test_malformed_payloads_are_refused(payload, message):
    with pytest.raises(PayloadError, match=message):
        deserialize_named_tensors(payload)


def test_truncated_bucket_is_refused():
    payload = serialize_named_tensors([("x", torch.randn(100))])
    blob = base64.b64decode(payload.partition(":")[2])
    with pytest.raises(PayloadError, match="cannot be read"):
        deserialize_named_tensors("safetensors:" + base64.b64encode(blob[:-40]).decode())


def test_duplicate_names_and_non_tensors_are_refused():
    with pytest.raises(ValueError, match="appears twice"):
        serialize_named_tensors([("x", torch.ones(1)), ("x", torch.ones(1))])
    with pytest.raises(TypeError, match="'x'"):
        serialize_named_tensors([("x", [1.0])])


def test_flattened_bucket_layout_is_aligned():
    dtypes = [torch.bfloat16, torch.float32, torch.int8, torch.float64]
    shapes = [(3,), (2, 2), (5,), (1,)]
    offsets, total = bucket_layout(dtypes, shapes)
    assert offsets[0] == 0 and all(o % BUCKET_ALIGN_BYTES == 0 for o in offsets)
    assert offsets == sorted(offsets) and total == offsets[-1] + 8
    assert parse_dtype("torch.bfloat16") is torch.bfloat16 and parse_dtype("float16") is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("float99")
