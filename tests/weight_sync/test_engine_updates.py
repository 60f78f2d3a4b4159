"""Weight updates through rollserve.Engine on a tiny Llama: disk, tensors, a gloo group,
memory release, and what happens to requests running during an update."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import rollserve
from rollserve.api.server import free_port
from rollserve.weight_sync import distributed
from tests.weight_sync.conftest import PROMPT_IDS, hf_greedy, hf_model, state_dict_of

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine(ckpts):
    with rollserve.Engine(ckpts["A"], max_total_tokens=4096, log_level="warning") as eng:
        yield eng


@pytest.fixture(scope="module")
def reference(ckpts):
    """Greedy answers of transformers on A and on B."""
    return {name: hf_greedy(hf_model(path), PROMPT_IDS, GREEDY["max_new_tokens"])
            for name, path in ckpts.items()}


def serve(engine, ckpts, name: str, version: str) -> None:
    result = engine.update_weights_from_disk(ckpts[name], weight_version=version)
    assert result["success"], result


def greedy(engine, ids=PROMPT_IDS, params=GREEDY):
    return engine.generate(input_ids=ids, sampling_params=params)


def test_disk_update_answers_with_new_weights_and_reuses_no_cache(engine, ckpts, reference):
    serve(engine, ckpts, "A", "a")
    assert greedy(engine)["output_ids"] == reference["A"]
    assert greedy(engine)["meta_info"]["cached_tokens"] > 0  # the prompt is cached now
    result = engine.update_weights_from_disk(ckpts["B"], weight_version="b")
    assert result == {"success": True, "num_paused_requests": 0, "in_flight_requests": "wait",
                      "message": f"updated 21 tensors from {ckpts['B']}"}
    after = greedy(engine)
    assert after["output_ids"] == reference["B"]  # the stale-cache probe
    assert after["meta_info"]["cached_tokens"] == 0
    assert after["meta_info"]["weight_version"] == "b"
    assert engine.get_model_info()["weight_version"] == "b"
    assert engine.get_server_info()["weight_version"] == "b"


def test_refused_update_keeps_old_weights_and_version(engine, ckpts, reference, tmp_path):
    from tests.weight_sync.conftest import broken_copy

    serve(engine, ckpts, "A", "a")
    result = engine.update_weights_from_disk(broken_copy(ckpts["B"], str(tmp_path / "b"), "shape"),
                                             weight_version="broken")
    assert not result["success"] and "model.layers.0.self_attn.k_proj.weight" in result["message"]
    out = greedy(engine)
    assert out["output_ids"] == reference["A"] and out["meta_info"]["weight_version"] == "a"


def test_tensor_update_in_buckets(engine, ckpts, reference):
    serve(engine, ckpts, "A", "a")
    named = list(state_dict_of(ckpts["B"]).items())
    buckets = [named[:1], named[1:12], named[12:]]
    for i, bucket in enumerate(buckets):
        last = i == len(buckets) - 1
        result = engine.update_weights_from_tensor(bucket, flush_cache=last,
                                                   weight_version="t" if last else None)
        assert result["success"], result
        if not last:
            assert engine.get_model_info()["weight_version"] == "a"
    out = greedy(engine)
    assert out["output_ids"] == reference["B"] and out["meta_info"]["weight_version"] == "t"


def test_tensor_update_is_validated_whole(engine, ckpts):
    serve(engine, ckpts, "A", "a")
    b = state_dict_of(ckpts["B"])
    name = "model.layers.0.self_attn.k_proj.weight"
    before = engine.get_weights_by_name(name, 10)
    bad_shape = [(name, b[name]), ("model.norm.weight", torch.ones(3))]
    result = engine.update_weights_from_tensor(bad_shape)
    assert not result["success"] and "'model.norm.weight'" in result["message"]
    unknown = [(name, b[name]), ("model.layers.0.nope.weight", torch.ones(3))]
    result = engine.update_weights_from_tensor(unknown)
    assert not result["success"] and "model.layers.0.nope.weight" in result["message"]
    assert engine.get_weights_by_name(name, 10) == before  # nothing of either bucket written


def test_get_weights_by_name_reads_fused_and_plain_parameters(engine, ckpts):
    serve(engine, ckpts, "B", "b")
    b = state_dict_of(ckpts["B"])
    for name in ("model.layers.1.self_attn.v_proj.weight", "model.layers.0.mlp.up_proj.weight",
                 "lm_head.weight", "model.norm.weight"):
        values = engine.get_weights_by_name(name, truncate_size=7)
        assert values == pytest.approx(b[name].flatten()[:7].tolist()), name
    with pytest.raises(ValueError, match="no parameter named"):
        engine.get_weights_by_name("model.layers.0.self_attn.qkv.nope")


def test_distributed_update_over_gloo(engine, ckpts, reference):
    serve(engine, ckpts, "A", "a")
    port, results = free_port(), {}

    def engine_side(key, call, *args, **kwargs):
        results[key] = call(*args, **kwargs)

    joining = threading.Thread(target=engine_side, args=(
        "init", engine.init_weights_update_group, "127.0.0.1", port, 1, 2, "wsync", "gloo"))
    joining.start()
    group = distributed.init_custom_process_group("gloo", "127.0.0.1", port, 2, 0, "wsync")
    joining.join()
    assert results["init"]["success"], results["init"]
    try:
        named = list(state_dict_of(ckpts["B"]).items())
        for i, (bucket, layout) in enumerate([(named[:9], None),
                                              (named[9:], distributed.FLATTENED_BUCKET)]):
            last = i == 1
            receiving = threading.Thread(target=engine_side, args=(
                i, engine.update_weights_from_distributed, [n for n, _ in bucket],
                [str(t.dtype) for _, t in bucket], [list(t.shape) for _, t in bucket], "wsync",
                last, "d" if last else None, layout))
            receiving.start()
            distributed.broadcast_named_tensors(group, bucket, layout)
            receiving.join()
            assert results[i]["success"], results[i]
    finally:
        assert distributed.destroy_group_with_engine(
            group, lambda: engine.destroy_weights_update_group("wsync"))["success"]
    out = greedy(engine)
    assert out["output_ids"] == reference["B"] and out["meta_info"]["weight_version"] == "d"


class StreamWatcher:
    """Streams one long greedy request in a thread; `started` is set after `min_tokens`."""

    def __init__(self, engine, max_new_tokens: int, min_tokens: int = 4):
        self.started, self.last, self.min_tokens = threading.Event(), None, min_tokens
        params = {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
        self.thread = threading.Thread(target=self._run, args=(engine, params))
        self.thread.start()

    def _run(self, engine, params):
        for chunk in engine.generate(input_ids=PROMPT_IDS, sampling_params=params, stream=True,
                                     return_logprob=True):
            self.last = chunk
            if len(chunk["output_ids"]) >= self.min_tokens:
                self.started.set()
        self.started.set()

    def result(self):
        self.thread.join(timeout=60)
        return self.last


def update_mid_request(engine, ckpts, max_new_tokens: int, min_tokens: int = 4,
                       pause: str = "retract", **update_kwargs):
    watcher = StreamWatcher(engine, max_new_tokens, min_tokens)
    assert watcher.started.wait(timeout=60)
    engine.pause_generation(pause)  # so that the update surely finds the request mid-decode
    try:
        result = engine.update_weights_from_disk(ckpts["B"], **update_kwargs)
    finally:
        engine.continue_generation()
    return result, watcher.result()


def assert_spans_true(ckpts, result, names):
    """Each span's tokens are its checkpoint's greedy choices given every token before them,
    and their logprobs that checkpoint's: the answer is exactly what its spans claim."""
    from rollserve.rollout.parity import trainer_logprobs

    tokens, meta = result["output_ids"], result["meta_info"]
    spans, logprobs = meta["weight_version_spans"], [e[0] for e in meta["output_token_logprobs"]]
    bounds = [s[0] for s in spans[1:]] + [len(tokens)]
    assert [s[1] for s in spans] == list(names) and spans[0][0] == 0
    for (start, version), end in zip(spans, bounds):
        model = hf_model(ckpts[names[version]])
        assert tokens[start:end] == hf_greedy(model, PROMPT_IDS + tokens[:start], end - start), version
        theirs = trainer_logprobs(model, [PROMPT_IDS + tokens[:start]], [tokens[start:end]], 0.0)[0]
        assert torch.allclose(torch.tensor(logprobs[start:end]), torch.tensor(theirs), atol=1e-4)


def test_running_request_is_retracted_then_recomputed_with_new_weights(engine, ckpts):
    serve(engine, ckpts, "A", "a")
    result, final = update_mid_request(engine, ckpts, 120, weight_version="mid")
    assert result["success"] and result["num_paused_requests"] == 1
    assert result["in_flight_requests"] == "retract"  # the pause's mode
    meta = final["meta_info"]
    assert meta["finish_reason"]["type"] == "length" and meta["weight_version"] == "mid"
    tokens, spans = final["output_ids"], meta["weight_version_spans"]
    assert len(tokens) == 120 and meta["stale_kv_tokens"] == 0
    assert 4 <= spans[1][0] < 120
    # the KV computed with A was not reused: after the split, B's greedy choices
    assert_spans_true(ckpts, final, {"a": "A", "mid": "B"})


def test_update_waits_for_requests_in_flight_by_default(engine, ckpts, reference):
    serve(engine, ckpts, "A", "a")
    watcher = StreamWatcher(engine, 60)
    assert watcher.started.wait(timeout=60)
    result = engine.update_weights_from_disk(ckpts["B"], weight_version="w")
    final = watcher.result()  # done before the update answered
    assert result["success"] and result["in_flight_requests"] == "wait", result
    meta = final["meta_info"]
    assert final["output_ids"] == hf_greedy(hf_model(ckpts["A"]), PROMPT_IDS, 60)
    assert meta["weight_version"] == "a" and meta["weight_version_spans"] == [[0, "a"]]
    after = greedy(engine)
    assert after["output_ids"] == reference["B"] and after["meta_info"]["weight_version"] == "w"


def test_waiting_update_is_refused_at_its_timeout(engine, ckpts):
    serve(engine, ckpts, "A", "a")
    watcher = StreamWatcher(engine, 400)
    assert watcher.started.wait(timeout=60)
    engine.pause_generation("in_place")  # the request cannot finish
    try:
        refused = engine.update_weights_from_disk(ckpts["B"], weight_version="late",
                                                  in_flight_requests="wait")
        assert not refused["success"] and "cannot finish on the old weights" in refused["message"]
    finally:
        engine.continue_generation()
    result = engine.update_weights_from_disk(ckpts["B"], weight_version="late",
                                             in_flight_timeout=0.2)
    assert not result["success"] and "in_flight_timeout=0.2s" in result["message"], result
    final = watcher.result()
    assert final["meta_info"]["weight_version_spans"] == [[0, "a"]]
    assert final["output_ids"] == hf_greedy(hf_model(ckpts["A"]), PROMPT_IDS, 400)
    assert engine.get_model_info()["weight_version"] == "a"


def test_restart_gives_answers_of_the_new_weights_only(engine, ckpts, reference):
    serve(engine, ckpts, "A", "a")
    out = {}
    params = dict(GREEDY, max_new_tokens=200)
    quiet = threading.Thread(target=lambda: out.update(r=greedy(engine, params=params)))
    quiet.start()  # not streamed: nothing of it has left the engine when the update comes
    result, streamed = update_mid_request(engine, ckpts, 200, pause="in_place",
                                          in_flight_requests="restart", weight_version="r")
    quiet.join(timeout=120)
    assert result["success"] and result["in_flight_requests"] == "restart"
    meta = out["r"]["meta_info"]
    assert meta["weight_version_spans"] == [[0, "r"]] and meta["stale_kv_tokens"] == 0
    assert out["r"]["output_ids"] == hf_greedy(hf_model(ckpts["B"]), PROMPT_IDS, 200)
    # a stream already sent tokens of A: it cannot be restarted, it is aborted and says why
    assert streamed["meta_info"]["finish_reason"]["type"] == "abort"
    assert "restart" in streamed["meta_info"]["finish_reason"]["message"]


def test_in_place_keeps_old_kv_and_says_so(engine, ckpts, reference):
    serve(engine, ckpts, "A", "a")
    result, final = update_mid_request(engine, ckpts, 40, pause="in_place", weight_version="ip")
    assert result["success"] and result["in_flight_requests"] == "in_place"
    meta = final["meta_info"]
    spans, n = meta["weight_version_spans"], len(final["output_ids"])
    assert [s[1] for s in spans] == ["a", "ip"] and 4 <= spans[1][0] < n
    assert meta["stale_kv_tokens"] == n - spans[1][0]
    a_tokens = hf_greedy(hf_model(ckpts["A"]), PROMPT_IDS, 40)
    assert final["output_ids"][:spans[1][0]] == a_tokens[:spans[1][0]]
    # the KV of A stays with that request alone: a new one computes its own
    after = greedy(engine)
    assert after["output_ids"] == reference["B"] and after["meta_info"]["stale_kv_tokens"] == 0


def test_no_flush_update_never_serves_old_kv(engine, ckpts, reference):
    """The issue's probe: flush_cache=false used to let a later request reuse A's KV."""
    serve(engine, ckpts, "A", "a")
    greedy(engine)
    assert greedy(engine)["meta_info"]["cached_tokens"] > 0
    assert engine.update_weights_from_disk(ckpts["B"], flush_cache=False,
                                           weight_version="nf")["success"]
    after = greedy(engine)
    assert after["output_ids"] == reference["B"] and after["meta_info"]["cached_tokens"] == 0
    again = greedy(engine)  # KV of B is cached and matched as usual
    assert again["output_ids"] == reference["B"] and again["meta_info"]["cached_tokens"] > 0


def test_load_during_update_loses_nothing_and_versions_are_right(engine, ckpts):
    serve(engine, ckpts, "A", "a")
    lengths = [2, 2, 2, 40, 40, 40]
    batch = {}
    params = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in lengths]
    thread = threading.Thread(target=lambda: batch.update(out=engine.generate(
        input_ids=[PROMPT_IDS[:k + 2] for k in range(len(lengths))], sampling_params=params)))
    thread.start()
    # once the watcher's request has 12 tokens, the 2-token ones are surely done
    result, final = update_mid_request(engine, ckpts, 40, min_tokens=12, weight_version="load")
    thread.join(timeout=60)
    assert result["success"] and result["num_paused_requests"] == 4
    outs = batch["out"] + [final]
    assert [o["meta_info"]["completion_tokens"] for o in outs] == lengths + [40]
    assert all(o["meta_info"]["finish_reason"]["type"] == "length" for o in outs)
    assert [o["meta_info"]["weight_version"] for o in outs] == ["a"] * 3 + ["load"] * 4


def test_abort_all_requests_aborts_running_requests(engine, ckpts):
    serve(engine, ckpts, "A", "a")
    result, final = update_mid_request(engine, ckpts, 400, pause="in_place",
                                       abort_all_requests=True, weight_version="ab")
    assert result["success"] and result["num_paused_requests"] == 0
    assert final["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(final["output_ids"]) < 400


def test_release_and_resume_memory(engine, ckpts, reference):
    serve(engine, ckpts, "B", "b")
    for tags in (None, ["kv_cache"], ["weights"]):
        assert engine.release_memory_occupation(tags)["success"]
        waiting = {}
        thread = threading.Thread(target=lambda: waiting.update(out=greedy(engine)))
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), f"a request ran while {tags} were released"
        assert engine.resume_memory_occupation(tags)["success"]
        thread.join(timeout=30)
        assert waiting["out"]["output_ids"] == reference["B"], tags
    bad = engine.release_memory_occupation(["gpu"])
    assert not bad["success"] and "unknown memory tag" in bad["message"]


def test_updates_queued_behind_a_waiting_one_apply_in_order(engine, ckpts, reference):
    serve(engine, ckpts, "A", "a")
    watcher = StreamWatcher(engine, 400)  # long enough to outlast the three calls below
    assert watcher.started.wait(timeout=60)
    answers, threads = {}, []

    def later(key, fn):
        threads.append(threading.Thread(target=lambda: answers.update({key: fn()})))
        threads[-1].start()
        time.sleep(0.3)

    later("first", lambda: engine.update_weights_from_disk(ckpts["B"], weight_version="q1"))
    later("held", lambda: greedy(engine))  # arrives while the first update waits
    later("second", lambda: engine.update_weights_from_disk(ckpts["A"], weight_version="q2",
                                                            in_flight_requests="retract"))
    for thread in threads:
        thread.join(timeout=120)
    final = watcher.result()
    assert final["meta_info"]["weight_version_spans"] == [[0, "a"]]  # finished on A first
    assert answers["first"]["success"] and answers["second"]["success"]
    assert answers["held"]["meta_info"]["weight_version"] == "q2"  # ran after both
    assert answers["held"]["output_ids"] == reference["A"]
    assert engine.get_model_info()["weight_version"] == "q2"


def test_request_held_by_a_waiting_update_can_be_aborted(engine, ckpts):
    serve(engine, ckpts, "A", "a")
    watcher = StreamWatcher(engine, 400)
    assert watcher.started.wait(timeout=60)
    answers = {}
    update = threading.Thread(target=lambda: answers.update(
        update=engine.update_weights_from_disk(ckpts["B"], weight_version="ha")))
    update.start()
    time.sleep(0.3)
    held = threading.Thread(target=lambda: answers.update(held=engine.generate(
        input_ids=PROMPT_IDS, sampling_params=GREEDY, rid="held-by-update")))
    held.start()
    time.sleep(0.3)
    engine.abort("held-by-update")
    held.join(timeout=10)
    assert not held.is_alive(), "the aborted request waited for the update"
    assert answers["held"]["meta_info"]["finish_reason"]["type"] == "abort"
    assert watcher.thread.is_alive()  # the update is still waiting for it
    update.join(timeout=120)
    assert answers["update"]["success"] and watcher.result()["meta_info"]["weight_version"] == "a"
