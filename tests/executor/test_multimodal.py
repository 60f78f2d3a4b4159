"""executor/multimodal.py on a tiny Qwen2-VL: an image shared by several requests (a GRPO
group) is encoded once; prefill chunks that cut an image get exactly their slice of its
features and positions; a weight write makes the cached features stale."""

from __future__ import annotations

import base64
import io

import torch

from rollserve.core.batch import BatchEntry, ScheduleBatch
from rollserve.core.sampling_params import SamplingParams
from rollserve.executor.model_loader import load_model
from rollserve.executor.multimodal import MultimodalRunner
from rollserve.core.tokenizer import load_tokenizer
from rollserve.frontend.multimodal import ImageProcessor
from rollserve.scheduler.request import Req
from tests.tiny_vlm import random_image


def _setup(folder):
    from transformers import AutoConfig

    model = load_model(folder, torch.float32, "cpu")
    tokenizer = load_tokenizer(folder)
    images = ImageProcessor(folder, AutoConfig.from_pretrained(folder), tokenizer)
    return model, tokenizer, images, MultimodalRunner(model, torch.device("cpu"), 8)


def _req(rid, row, tokenizer, images, pictures):
    ids = tokenizer.encode("see " + images.placeholder * len(pictures) + " then")
    data_urls = []
    for p in pictures:
        buf = io.BytesIO()
        p.save(buf, format="PNG")
        data_urls.append(base64.b64encode(buf.getvalue()).decode())
    expanded, mm = images.process(ids, data_urls, "image_data", "text")
    req = Req(rid=rid, input_ids=expanded, sampling_params=SamplingParams(), mm_inputs=mm)
    req.req_pool_idx = row
    return req


def _entry(req, start, end):
    return BatchEntry(req, start, req.input_ids[start:end], torch.zeros(end - start, dtype=torch.int64),
                      sample=end == len(req.input_ids))


def test_shared_image_encoded_once_and_chunks_take_their_slice(tiny_vlms):
    model, tokenizer, images, runner = _setup(tiny_vlms["qwen2_vl"])
    cat, dog = random_image(140, 120, 1), random_image(90, 60, 2)
    group = [_req(f"g{i}", i, tokenizer, images, [cat, dog]) for i in range(3)]
    whole = runner.prepare(ScheduleBatch([_entry(r, 0, len(r.input_ids)) for r in group]))
    assert runner.images_encoded == 2  # two distinct images for three requests
    n = len(group[0].input_ids)
    assert whole.image_rows.numel() == 3 * group[0].mm_inputs.image_token_count()
    # the same prompt in chunks of 7 tokens (every image is cut), one request per batch
    late = _req("late", 5, tokenizer, images, [cat, dog])
    rows, embeds, positions = [], [], []
    for start in range(0, n, 7):
        end = min(start + 7, n)
        part = runner.prepare(ScheduleBatch([_entry(late, start, end)]))
        rows.append(part.image_rows + start)
        embeds.append(part.image_embeds)
        positions.append(part.positions)
    assert runner.images_encoded == 2  # still cached
    first = whole.image_rows < n
    assert torch.equal(torch.cat(rows), whole.image_rows[first])
    assert torch.equal(torch.cat(embeds), whole.image_embeds[first])
    assert torch.equal(torch.cat(positions, dim=1), whole.positions[:, :n])
    assert int(model.rope_deltas[5]) == late.mm_inputs.mrope_delta < 0
    # decode steps only: the model reads the deltas, nothing to prepare
    step = BatchEntry(late, n, [7], torch.zeros(1, dtype=torch.int64), sample=True, is_decode=True)
    assert runner.prepare(ScheduleBatch([step])) is None
    # new weights: the features are computed again
    model.load_weights([])
    runner.prepare(ScheduleBatch([_entry(late, 0, n)]))
    assert runner.images_encoded == 4


def test_radix_keys_differ_exactly_where_the_images_differ(tiny_vlms):
    _model, tokenizer, images, _runner = _setup(tiny_vlms["qwen2_vl"])
    a = _req("a", 0, tokenizer, images, [random_image(90, 60, 1)])
    b = _req("b", 1, tokenizer, images, [random_image(90, 60, 2)])
    assert a.input_ids == b.input_ids  # same text, same image size
    start = a.mm_inputs.images[0].offset
    assert a.radix_key[:start] == b.radix_key[:start] and a.radix_key[start] != b.radix_key[start]
    assert all(k < 0 for k in a.radix_key[start:start + a.mm_inputs.images[0].num_tokens])
    same = _req("c", 2, tokenizer, images, [random_image(90, 60, 1)])
    assert same.radix_key == a.radix_key


def test_draft_tree_rows_beside_a_prefill_sit_at_their_depth(tiny_vlms):
    """A speculative verify entry in a batch that also prefills: a chain's rows at kv_len + i,
    a tree's at kv_len + depth, each plus the request's rope delta (as the decode path's
    positions + delta)."""
    model, tokenizer, images, runner = _setup(tiny_vlms["qwen2_vl"])
    picture = random_image(90, 60, 3)
    old, new = (_req(rid, row, tokenizer, images, [picture])
                for rid, row in (("old", 0), ("new", 1)))
    n, delta = len(old.input_ids), old.mm_inputs.mrope_delta
    assert delta != 0
    parents = [-1, 0, 0, 1, 3]  # rows [last token, 4 nodes]: depths 0 1 1 2 3
    tree = BatchEntry(old, n, [7] * 5, torch.zeros(5, dtype=torch.int64), sample=True,
                      logit_rows=list(range(5)), is_decode=True, tree_parents=parents)
    chain = BatchEntry(old, n, [7] * 3, torch.zeros(3, dtype=torch.int64), sample=True,
                       logit_rows=list(range(3)), is_decode=True)
    for entry, offsets in ((tree, [0, 1, 1, 2, 3]), (chain, [0, 1, 2])):
        mm = runner.prepare(ScheduleBatch([entry, _entry(new, 0, len(new.input_ids))]))
        want = torch.tensor([n + d + delta for d in offsets]).expand(3, -1)
        assert torch.equal(mm.positions[:, :len(offsets)], want)
