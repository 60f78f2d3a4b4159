"""RolloutClient and AsyncRolloutClient against real `rollserve serve` processes on
tiny random models: GRPO groups with logprobs, two replicas under both balancing
modes, retries (dead replica, late server), timeouts, the asyncio concurrency limit,
launch() cleanup, weight updates on every replica, and classify."""

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import torch
from safetensors.torch import load_file

from rollserve.api.server import free_port, spawn_server, wait_until_healthy
from rollserve.rollout import AsyncRolloutClient, RolloutClient, RolloutError, Sample
from rollserve.rollout.balancer import Balancer
from rollserve.rollout.launch import stop_process_tree
from tests.tiny_models import save_tiny_checkpoint, tiny_config

SERVER_ARGS = ["--max-total-tokens", "8192"]
SHORT = {"max_new_tokens": 5, "ignore_eos": True}
GREEDY = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
PROMPTS = ["The first prompt of the test", "A second, different prompt", "Third one here"]


def start(model_dir: str, log_dir, name: str, port=None):
    log = open(os.path.join(str(log_dir), f"{name}.log"), "w")
    return spawn_server(["--model-path", model_dir, *SERVER_ARGS], port=port, log_file=log)


def generated_tokens(url: str) -> int:
    with RolloutClient(url) as client:
        return client.get_server_info()["generation_tokens_total"]


@pytest.fixture(scope="module")
def replicas(tiny_models, tmp_path_factory):
    """Two servers on the same tiny Llama, started together."""
    logs = tmp_path_factory.mktemp("replica-logs")
    procs = [start(tiny_models["llama"], logs, f"replica{i}") for i in range(2)]
    try:
        for proc, url in procs:
            wait_until_healthy(url, proc, timeout=300)
        yield [url for _, url in procs]
    finally:
        with ThreadPoolExecutor() as pool:
            list(pool.map(stop_process_tree, [proc for proc, _ in procs]))


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, default_model_dir) -> str:
    """A tiny random LlamaForSequenceClassification with one label."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = str(tmp_path_factory.mktemp("reward-model"))
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(3)
    model = AutoModelForSequenceClassification.from_config(
        tiny_config("llama", len(tokenizer), num_labels=1, pad_token_id=2))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- no server: balancing and argument checks --------------------------------------------
def test_balancer_modes_and_down_replicas():
    rr = Balancer(["a", "b", "c"], "round_robin")
    assert [rr.acquire() for _ in range(4)] == ["a", "b", "c", "a"]
    sq = Balancer(["a", "b"], "shortest_queue")
    assert sq.acquire(weight=8) == "a"
    assert [sq.acquire() for _ in range(3)] == ["b", "b", "b"]  # a still has 8 in flight
    sq.release("a", weight=8)
    assert sq.acquire() == "a"
    rr.mark_down("b", 60)
    assert "b" not in [rr.acquire() for _ in range(4)]
    assert rr.acquire(avoid=["a", "c"]) == "b"  # down, but the only one left
    assert not rr.has_alternative(["a", "c"])


@pytest.mark.parametrize("kwargs, field", [
    (dict(), "prompts"), (dict(prompts="x", input_ids=[1]), "prompts"),
    (dict(prompts=[1, 2]), "prompts"), (dict(input_ids=[[1], "x"]), "input_ids"),
    (dict(prompts="x", n=0), "n"), (dict(prompts="x", n=2, sampling_params={"n": 3}), "n")])
def test_bad_generate_arguments_name_the_field(kwargs, field):
    with RolloutClient("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match=f"^{field}:"):
            client.generate(**kwargs)


def test_bad_client_arguments():
    with pytest.raises(ValueError, match="balance"):
        RolloutClient("http://x", balance="random")
    with pytest.raises(ValueError, match="urls"):
        RolloutClient([])


# ---- generation ----------------------------------------------------------------------------
def test_groups_of_n_with_logprobs(replicas):
    with RolloutClient(replicas[0]) as client:
        version = client.get_model_info()["weight_version"]
        groups = client.generate(PROMPTS, n=4, sampling_params=SHORT)
        with_prompt = client.generate(PROMPTS[0], n=2, sampling_params=SHORT, logprob_start_len=0)
    assert len(groups) == len(PROMPTS)
    for i, group in enumerate(groups):
        assert [(s.prompt_index, s.sample_index) for s in group] == [(i, k) for k in range(4)]
        for s in group:
            assert isinstance(s, Sample) and s.weight_version == version
            assert len(s.output_ids) == len(s.output_logprobs) == s.completion_tokens == 5
            assert all(lp <= 0 for lp in s.output_logprobs)
            assert s.finish_reason["type"] == "length"
            assert s.input_token_logprobs == []  # logprob_start_len -1: none for the prompt
            assert s.cached_tokens > 0  # the group ran on one server and shared its prompt's prefix
        assert len({tuple(s.output_ids) for s in group}) > 1  # n independent samples
    for s in with_prompt[0]:
        assert len(s.input_token_logprobs) == s.prompt_tokens and s.input_token_logprobs[0] is None
        assert all(lp <= 0 for lp in s.input_token_logprobs[1:])


def test_input_ids_and_text_agree(replicas, tiny_models):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_models["llama"]).encode(PROMPTS[0])
    with RolloutClient(replicas[0]) as client:
        by_text = client.generate(PROMPTS[0], sampling_params=GREEDY, return_logprob=False)
        by_ids = client.generate(input_ids=ids, sampling_params=GREEDY, return_logprob=False)
    assert by_text[0][0].output_ids == by_ids[0][0].output_ids
    assert by_ids[0][0].output_logprobs is None


@pytest.mark.parametrize("balance", ["round_robin", "shortest_queue"])
def test_both_replicas_get_requests(replicas, balance):
    before = [generated_tokens(u) for u in replicas]
    with RolloutClient(replicas, balance=balance, max_concurrency=4) as client:
        groups = client.generate(PROMPTS * 2, n=2, sampling_params=SHORT)
        sent = dict(client.balancer.sent)
    assert [len(g) for g in groups] == [2] * 6
    assert sorted(sent) == sorted(replicas) and sum(sent.values()) == 6
    if balance == "round_robin":
        assert sent[replicas[0]] == sent[replicas[1]] == 3
    after = [generated_tokens(u) for u in replicas]
    assert all(a - b >= 10 for a, b in zip(after, before))  # each server really generated


def test_shortest_queue_avoids_the_busy_replica(replicas):
    client = RolloutClient(replicas, balance="shortest_queue")
    long_call = threading.Thread(target=client.generate, args=(PROMPTS[0],), kwargs=dict(
        n=4, sampling_params={"max_new_tokens": 64, "ignore_eos": True}))
    long_call.start()
    while not any(client.balancer.in_flight.values()):
        time.sleep(0.001)
    busy = max(replicas, key=lambda u: client.balancer.in_flight[u])
    client.generate(PROMPTS, sampling_params=SHORT)
    long_call.join()
    client.close()
    assert client.balancer.sent[busy] == 1  # the 3 short calls all went to the idle replica


# ---- failures ------------------------------------------------------------------------------
def test_dead_replica_is_retried_on_the_live_one(replicas):
    dead = f"http://127.0.0.1:{free_port()}"
    with RolloutClient([dead, replicas[0]], max_retries=2, backoff=0.2) as client:
        groups = client.generate(PROMPTS, n=2, sampling_params=SHORT)
        assert client.balancer.sent[dead] >= 1
    assert all(len(s.output_ids) == 5 for g in groups for s in g)


def test_dead_server_gives_rollout_error_after_retries():
    client = RolloutClient(f"http://127.0.0.1:{free_port()}", max_retries=2, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(RolloutError, match="connection failed after 3 attempts") as info:
        client.generate("hello")
    assert info.value.status is None
    assert 0.15 <= time.monotonic() - started < 5  # waited 0.05 + 0.1 between attempts
    client.close()


def test_timeout_gives_rollout_error(replicas):
    with RolloutClient(replicas[0], timeout=0.3, max_retries=1, backoff=0.05) as client:
        with pytest.raises(RolloutError, match="timed out after 2 attempts"):
            client.generate(PROMPTS[0], sampling_params={"max_new_tokens": 1500, "ignore_eos": True})


def test_bad_request_is_not_retried(replicas):
    with RolloutClient(replicas[0], max_retries=3) as client:
        with pytest.raises(RolloutError) as info:
            client.generate(PROMPTS[0], sampling_params={"temperature": -1})
        assert client.balancer.sent[replicas[0]] == 1
    assert info.value.status == 400 and "temperature" in info.value.message


def test_server_that_starts_late(tiny_models, tmp_path):
    port = free_port()
    client = RolloutClient(f"http://127.0.0.1:{port}", max_retries=10, backoff=0.25)
    server = {}
    timer = threading.Timer(0.5, lambda: server.update(
        proc=start(tiny_models["llama"], tmp_path, "late", port=port)[0]))
    timer.start()
    try:
        groups = client.generate(PROMPTS[0], sampling_params=SHORT)
        assert len(groups[0][0].output_ids) == 5
    finally:
        timer.join()
        client.close()
        stop_process_tree(server["proc"])


# ---- asyncio ------------------------------------------------------------------------------------
def test_async_client_respects_the_concurrency_limit(replicas):
    async def run():
        peak = 0

        async def watch(client):
            nonlocal peak
            while True:
                peak = max(peak, sum(client.balancer.in_flight.values()))
                await asyncio.sleep(0)

        async with AsyncRolloutClient(replicas, max_concurrency=2, balance="shortest_queue") as client:
            watcher = asyncio.create_task(watch(client))
            groups = await client.generate(PROMPTS * 3, sampling_params=SHORT)
            watcher.cancel()
            return groups, peak, dict(client.balancer.sent)

    groups, peak, sent = asyncio.run(run())
    assert [g[0].prompt_index for g in groups] == list(range(9))
    assert peak == 2 and len(sent) == 2


# ---- weights ------------------------------------------------------------------------------------
def test_flush_cache_on_every_replica(replicas):
    with RolloutClient(replicas) as client:
        answer = client.flush_cache()  # SGLang's plain-text answer from each
    assert answer["success"] is True and sorted(answer["replicas"]) == sorted(replicas)
    assert all(text.startswith("Cache flushed.") for text in answer["replicas"].values())


def test_weight_updates_reach_every_replica(replicas, tiny_models, tmp_path, default_model_dir):
    other = save_tiny_checkpoint("llama", str(tmp_path / "other"), default_model_dir, seed=11)
    original = list(load_file(os.path.join(tiny_models["llama"], "model.safetensors")).items())
    with RolloutClient(replicas) as client:
        def greedy_per_replica():  # round robin: one call on each replica
            groups = client.generate([PROMPTS[1]] * 2, sampling_params=GREEDY)
            return [(g[0].output_ids, g[0].weight_version) for g in groups]

        before = greedy_per_replica()
        answer = client.update_weights_from_disk(other, weight_version="disk-1")
        assert answer["success"] and sorted(answer["replicas"]) == sorted(replicas)
        on_disk = greedy_per_replica()
        assert on_disk[0] == on_disk[1] and on_disk[0][1] == "disk-1"
        assert on_disk[0][0] != before[0][0]

        paths = []  # generation is held from the first bucket to the last, on both replicas
        client.http.event_hooks["request"].append(lambda request: paths.append(request.url.path))
        answer = client.update_weights_from_tensors(original, weight_version="tensor-2",
                                                     bucket_bytes=64 << 10)
        client.http.event_hooks["request"].clear()
        assert answer["success"] and answer["num_buckets"] > 1
        held = paths[paths.index("/pause_generation"):]
        assert held == (["/pause_generation"] * 2 + ["/update_weights_from_tensor"] * (
            2 * answer["num_buckets"]) + ["/continue_generation"] * 2)
        assert greedy_per_replica() == [(before[0][0], "tensor-2")] * 2
        assert client.get_model_info()["weight_version"] == "tensor-2"

        with pytest.raises(RolloutError, match="nowhere") as info:
            client.update_weights_from_disk(str(tmp_path / "nowhere"))
        assert info.value.status == 400
        assert greedy_per_replica()[0] == (before[0][0], "tensor-2")  # the old weights still serve


# ---- launch + classify ------------------------------------------------------------------------
def test_launch_classify_and_clean_exit(reward_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    inputs = [[5, 6, 7, 8], [9, 10, 11]]
    already = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. other tests' servers
    with open(tmp_path / "server.log", "w") as log:
        with RolloutClient.launch(reward_model_dir, server_args=SERVER_ARGS, log_file=log) as client:
            started = [p for p in psutil.Process().children(recursive=True) if p.pid not in already]
            assert len(started) >= 3  # the server, its scheduler and its detokenizer
            scores = client.classify(input_ids=inputs)
            assert len(client.classify(["a text", "another text", "a third"])) == 3
            conversation = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
            assert len(client.classify(conversations=[conversation, conversation])) == 2
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    with torch.no_grad():
        expected = [model(torch.tensor([ids])).logits[0].tolist() for ids in inputs]
    assert torch.allclose(torch.tensor(scores), torch.tensor(expected), atol=1e-4)
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
