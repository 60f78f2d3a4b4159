"""A tiny random Qwen2-VL served over HTTP: image_url chat requests, native image_data in every
form, token-in/token-out input_ids with image placeholders, and every bad image input refused
with a 400 naming the field."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest

from rollserve.api.chat_images import message_text
from rollserve.api.protocol import ApiError, ContentPart
from rollserve.core.sampling_params import InvalidRequest
from rollserve.frontend.multimodal import attach_images
from rollserve.frontend.request_input import GenerateReqInput, normalize
from tests.api.conftest import start_server, stop_server
from tests.tiny_vlm import random_image

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
GREEDY = {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True}


def _png(seed: int, size=(90, 60)) -> bytes:
    buf = io.BytesIO()
    random_image(*size, seed).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(seed: int, size=(90, 60)) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(seed, size)).decode()


@pytest.fixture(scope="module")
def vlm_server(tiny_vlms, tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("vlm-logs"), "vlm", [
        "--model-path", tiny_vlms["qwen2_vl"], "--context-length", "160",
        "--limit-mm-data-per-request", '{"image": 2}'])
    yield running
    stop_server(running)


def _generate(url, **body):
    return httpx.post(f"{url}/generate", json=body, timeout=120)


def test_chat_answers_an_image_url_request(vlm_server, tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(_png(3))
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": _data_url(1)}},
        {"type": "image_url", "image_url": {"url": str(path)}}]}]
    r = httpx.post(f"{vlm_server.url}/v1/chat/completions", timeout=120,
                   json={"model": "default", "messages": messages, "max_tokens": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] is not None
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["prompt_tokens"] > 12  # the images' tokens are counted
    info = httpx.get(f"{vlm_server.url}/get_model_info", timeout=30).json()
    assert info["has_image_understanding"] is True


def test_native_image_forms_agree_and_input_ids_round_trip(vlm_server, tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(_png(5))
    raw = base64.b64encode(_png(5)).decode()
    text = f"Look: {PLACEHOLDER} ok"
    answers = [_generate(vlm_server.url, text=text, sampling_params=GREEDY, image_data=form).json()
               for form in (raw, "data:image/png;base64," + raw, str(path), f"file://{path}", [raw])]
    assert len({tuple(a["output_ids"]) for a in answers}) == 1
    assert answers[-1]["meta_info"]["cached_tokens"] > 0  # the same image: a cache hit
    expanded = answers[0]["meta_info"]["expanded_input_ids"]
    # token in: ids with one placeholder, or the expanded ids returned before
    tok = httpx.post(f"{vlm_server.url}/tokenize", json={"prompt": text}, timeout=30).json()
    for ids in (tok["tokens"], expanded):
        out = _generate(vlm_server.url, input_ids=ids, sampling_params=GREEDY, image_data=raw).json()
        assert out["meta_info"]["expanded_input_ids"] == expanded
        assert out["output_ids"] == answers[0]["output_ids"]
    # a GRPO group: n samples of one image prompt share its prefill (image included)
    group = _generate(vlm_server.url, text=text, image_data=raw,
                      sampling_params={**GREEDY, "n": 3}).json()
    assert [g["output_ids"] for g in group] == [answers[0]["output_ids"]] * 3
    assert all(g["meta_info"]["cached_tokens"] == len(expanded) - 1 for g in group)
    # streamed: the expansion comes once, with the last chunk
    with httpx.stream("POST", f"{vlm_server.url}/generate", timeout=120, json={
            "text": text, "image_data": raw, "sampling_params": GREEDY, "stream": True}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    assert len(chunks) > 1 and chunks[-1]["meta_info"]["expanded_input_ids"] == expanded
    assert all("expanded_input_ids" not in c["meta_info"] for c in chunks[:-1])
    # a batch: one image list per prompt
    batch = _generate(vlm_server.url, text=[text, f"{PLACEHOLDER}{PLACEHOLDER}"],
                      sampling_params=GREEDY, image_data=[raw, [raw, _data_url(6)]]).json()
    assert batch[0]["output_ids"] == answers[0]["output_ids"] and len(batch[1]["output_ids"]) == 4


@pytest.mark.parametrize("body, field, words", [
    ({"text": f"a {PLACEHOLDER}", "image_data": "not-an-image!!"}, "image_data", "base64"),
    ({"text": f"a {PLACEHOLDER}", "image_data": base64.b64encode(b"plain text").decode()},
     "image_data", "cannot decode"),
    ({"text": f"a {PLACEHOLDER}", "image_data": "http://example.com/cat.png"}, "image_data",
     "remote"),
    ({"text": f"a {PLACEHOLDER}", "image_data": "/no/such/file.png"}, "image_data", "cannot read"),
    ({"text": f"{PLACEHOLDER}" * 3, "image_data": ["A", "B", "C"]}, "image_data", "limit is 2"),
    ({"text": "no placeholder", "image_data": "IMG"}, "text", "placeholders"),
    ({"text": "x " * 145 + PLACEHOLDER, "image_data": "BIG"}, "image_data", "maximum input length"),
])
def test_bad_image_inputs_are_400s_naming_the_field(vlm_server, body, field, words):
    image = {"IMG": _data_url(1), "BIG": _data_url(2, (280, 280))}
    if isinstance(body["image_data"], str):
        body = {**body, "image_data": image.get(body["image_data"], body["image_data"])}
    else:
        body = {**body, "image_data": [_data_url(i) for i in range(3)]}
    r = _generate(vlm_server.url, sampling_params=GREEDY, **body)
    assert r.status_code == 400, r.text
    assert field in r.text and words in r.text, r.text


def test_chat_refuses_remote_image_urls(vlm_server):
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    r = httpx.post(f"{vlm_server.url}/v1/chat/completions", timeout=60,
                   json={"model": "default", "messages": messages, "max_tokens": 2})
    assert r.status_code == 400 and "remote image URLs" in r.text, r.text


def test_text_only_models_refuse_images():
    """The pieces a text-only server runs: no image processor -> 400 naming the field."""
    item = normalize(GenerateReqInput(text="hi", image_data="abc"))[0][0]
    with pytest.raises(InvalidRequest) as e:
        attach_images(None, item, [1, 2], "text", 100)
    assert e.value.field == "image_data" and "text-only" in str(e.value)
    part = ContentPart(type="image_url", image_url={"url": "data:image/png;base64,AAAA"})
    with pytest.raises(ApiError) as e2:
        message_text([part], 0, [], None)
    assert e2.value.status == 400 and "vision-language" in str(e2.value.message)


def test_rollout_client_sends_images_per_prompt(vlm_server):
    from rollserve.rollout.client import RolloutClient

    raw = base64.b64encode(_png(5)).decode()
    with RolloutClient(vlm_server.url, progress=False) as client:
        groups = client.generate([f"Look: {PLACEHOLDER} ok", "no image here"], n=2,
                                 sampling_params=GREEDY, image_data=[raw, None])
        with pytest.raises(ValueError, match="image_data"):
            client.generate(["a", "b"], image_data=[raw])
    assert [len(g) for g in groups] == [2, 2]
    assert groups[0][0].prompt_tokens > groups[1][0].prompt_tokens  # the image's tokens count
    assert groups[0][0].meta_info["expanded_input_ids"][-2:] == groups[0][1].meta_info["expanded_input_ids"][-2:]
