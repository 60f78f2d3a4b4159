"""Trainers' own weight pushes against a real server (tiny Llama A, pushed to B):
SGLang's / slime's process-group helper (PrefixStore layout), TRL's VLLMClient (vLLM's
weight-transfer protocol, gloo in place of NCCL), `trl vllm-serve`'s communicator, and
verl's / slime's pickled update_weights_from_tensor payloads from a trusted local peer.
Each replays the calls of the framework's source and reads the weights back."""

from __future__ import annotations

import base64
import datetime
import io
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import torch

from rollserve.api.server import free_port
from tests.weight_sync.conftest import PROMPT_IDS, hf_greedy, hf_model, state_dict_of, tiny_server

MAX_NEW = 8
NAME = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def http(ckpts, tmp_path_factory):
    with tiny_server(ckpts["A"], tmp_path_factory.mktemp("logs"),
                     ["--trust-local-pickled-tensors"]) as client:
        yield client


@pytest.fixture(scope="module")
def reference(ckpts):
    return {name: hf_greedy(hf_model(path), PROMPT_IDS, MAX_NEW) for name, path in ckpts.items()}


@pytest.fixture
def on_a(http, ckpts):
    """Every test starts from checkpoint A."""
    response = http.post("/update_weights_from_disk", json={"model_path": ckpts["A"]})
    assert response.status_code == 200, response.text


def greedy(http) -> list:
    body = {"input_ids": PROMPT_IDS,
            "sampling_params": {"temperature": 0, "max_new_tokens": MAX_NEW, "ignore_eos": True}}
    return http.post("/generate", json=body).json()["output_ids"]


def first_values(http, name=NAME, n=5) -> list:
    return http.post("/get_weights_by_name", json={"name": name, "truncate_size": n}).json()


# ---- SGLang's / slime's trainer helper: rendezvous store wrapped in PrefixStore(group_name) --------
def sglang_style_group(backend, address, port, world_size, rank, group_name):
    """What sglang.srt.utils.init_custom_process_group does (slime and verl use the same):
    rendezvous, then PrefixStore(group_name) around the store, then a new group on it."""
    from torch.distributed.distributed_c10d import PrefixStore, _new_process_group_helper, _world
    from torch.distributed.rendezvous import rendezvous

    timeout = datetime.timedelta(seconds=120)
    store, rank, world_size = next(rendezvous(f"tcp://{address}:{port}", rank, world_size,
                                              timeout=timeout))
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    group, _ = _new_process_group_helper(world_size, rank, [], backend, store,
                                         group_name=group_name, timeout=timeout)
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def test_slime_update_weights_from_distributed_with_prefix_store(http, ckpts, reference, on_a):
    port = free_port()
    group_name = "slime-pg"
    with ThreadPoolExecutor(1) as pool:
        # slime's SGLangEngine.init_weights_update_group payload
        joined = pool.submit(http.post, "/init_weights_update_group", json={
            "master_address": "127.0.0.1", "master_port": port, "rank_offset": 1,
            "world_size": 2, "group_name": group_name, "backend": "gloo"})
        group = sglang_style_group("gloo", "127.0.0.1", port, 2, 0, group_name)
        assert joined.result().status_code == 200, joined.result().text
    tensors = state_dict_of(ckpts["B"])
    names = sorted(tensors)
    with ThreadPoolExecutor(1) as pool:
        # slime's update_weights_from_distributed payload: dtypes without "torch."
        answer = pool.submit(http.post, "/update_weights_from_distributed", json={
            "names": names, "dtypes": [str(tensors[n].dtype).replace("torch.", "") for n in names],
            "shapes": [list(tensors[n].shape) for n in names], "group_name": group_name,
            "flush_cache": False, "weight_version": "slime-1"})
        for n in names:  # slime broadcasts one tensor at a time from rank 0
            torch.distributed.broadcast(tensors[n], src=0, group=group)
        assert answer.result().status_code == 200, answer.result().text
    assert first_values(http) == pytest.approx(tensors[NAME].reshape(-1)[:5].tolist())
    assert greedy(http) == reference["B"]
    assert http.get("/get_weight_version").json()["weight_version"] == "slime-1"
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(http.post, "/destroy_weights_update_group", json={"group_name": group_name})
        torch.distributed.destroy_process_group(group)
        assert done.result().status_code == 200


# ---- TRL's VLLMClient (vLLM weight-transfer protocol) --------------------------------------------
@pytest.fixture
def trl_client(http, monkeypatch):
    """TRL's real VLLMClient. It refuses to start without vLLM installed, and opens its end of
    the weight push with vLLM's NCCL helpers: those two are swapped for rollserve's gloo
    helpers of the same signature; every HTTP call is TRL's own."""
    pytest.importorskip("trl")
    import trl.generation.vllm_client as vc

    from rollserve.weight_sync.packed import packed_broadcast_producer
    from rollserve.weight_sync.trl_trainer import trainer_init

    monkeypatch.setattr(vc, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(vc, "_HAS_STATEFUL_TRAINER_ENGINE", True)
    monkeypatch.setattr(vc, "packed_nccl_broadcast_producer", packed_broadcast_producer,
                        raising=False)
    monkeypatch.setattr(vc, "open_trainer_endpoint",
                        lambda info: trainer_init(info, backend="gloo"), raising=False)
    return vc.VLLMClient(base_url=str(http.base_url).rstrip("/"), group_port=free_port(),
                         connection_timeout=30)


def open_communicator(client):
    """VLLMClient.init_communicator's steps (it stops before them on a CPU-only trainer)."""
    import trl.generation.vllm_client as vc

    assert client.get_server_info()["weight_transfer_config"] is not None
    init_info = {"master_address": "127.0.0.1", "master_port": client.group_port,
                 "rank_offset": 1, "world_size": client.get_world_size() + 1, "packed": True,
                 "group": "torch"}  # as examples/trl/rollserve_trl.py: rollserve's helpers
    with ThreadPoolExecutor(max_workers=1) as executor:
        future = executor.submit(client._post, f"{client.base_url}/init_weight_transfer_engine",
                                 json={"init_info": init_info})
        client.communicator = vc.open_trainer_endpoint(init_info)
        future.result()


def test_trl_vllm_client_pushes_a_whole_model(http, trl_client, ckpts, reference, on_a):
    open_communicator(trl_client)
    model_b = hf_model(ckpts["B"])
    with trl_client.weight_update():  # start_weight_update ... finish_weight_update
        trl_client.update_model_params(model_b)
        assert greedy(http) == reference["A"]  # staged, not applied before finish
    assert greedy(http) == reference["B"]
    param = dict(model_b.named_parameters())[NAME]
    assert first_values(http) == pytest.approx(param.reshape(-1)[:5].tolist())
    trl_client.reset_prefix_cache()
    # one tensor outside weight_update(): the client opens and closes its own update
    trl_client.update_named_param(NAME, torch.zeros_like(param))
    assert first_values(http) == [0.0] * 5
    trl_client.close_communicator()
    trl_client.communicator = None


def test_empty_update_info_reuses_the_last_announced_tensors(http, trl_client, ckpts, on_a):
    """vLLM's rule: update_weights with three empty lists receives the tensors the previous
    call announced (a trainer that pushes the same parameters each round announces them
    once after init)."""
    import trl.generation.vllm_client as vc

    open_communicator(trl_client)
    param = dict(hf_model(ckpts["A"]).named_parameters())[NAME].detach()
    trl_client.update_named_param(NAME, torch.zeros_like(param))  # announces NAME
    assert first_values(http) == [0.0] * 5
    with trl_client.weight_update():
        with ThreadPoolExecutor(max_workers=1) as executor:
            future = executor.submit(trl_client._post, f"{trl_client.base_url}/update_weights",
                                     json={"update_info": {"names": [], "dtype_names": [],
                                                           "shapes": []}})
            vc.packed_nccl_broadcast_producer(iterator=iter([(NAME, torch.full_like(param, 2.0))]),
                                              group=trl_client.communicator, src=0,
                                              post_iter_func=lambda item: item[1])
            future.result()
    assert first_values(http) == [2.0] * 5
    trl_client.close_communicator()
    trl_client.communicator = None


def test_trl_push_with_a_wrong_tensor_is_refused_whole(http, trl_client, ckpts, reference, on_a):
    open_communicator(trl_client)
    before = first_values(http)
    with pytest.raises(Exception, match="Request failed: 400"):
        with trl_client.weight_update():
            trl_client.update_named_param(NAME, torch.ones(3, 3))  # wrong shape
    assert first_values(http) == before and greedy(http) == reference["A"]


# ---- trl vllm-serve (TRL <= 0.2x): recorded from trl/extras/vllm_client.py ------------------------
def test_trl_vllm_serve_protocol_push(http, ckpts, reference, on_a):
    from rollserve.weight_sync.trl_trainer import LegacyCommunicator

    base = str(http.base_url).rstrip("/")
    port = free_port()
    vllm_world_size = httpx.get(f"{base}/get_world_size/").json()["world_size"]
    world_size, rank = vllm_world_size + 1, vllm_world_size
    response = httpx.post(f"{base}/init_communicator/", json={
        "host": "0.0.0.0", "port": port, "world_size": world_size, "client_device_uuid": "42"})
    assert response.status_code == 200, response.text
    communicator = LegacyCommunicator("127.0.0.1", port, rank, world_size, backend="gloo")
    tensors = state_dict_of(ckpts["B"])
    for name, weights in tensors.items():
        dtype, shape = str(weights.dtype), tuple(weights.shape)
        response = httpx.post(f"{base}/update_named_param/",
                              json={"name": name, "dtype": dtype, "shape": shape})
        assert response.status_code == 200, response.text
        if name == next(iter(tensors)):  # the engine waits for this broadcast beside generation
            assert greedy(http) == reference["A"]
        communicator.broadcast(weights, src=rank)
        communicator.group.barrier()
    assert greedy(http) == reference["A"]  # staged until reset_prefix_cache
    assert httpx.post(f"{base}/reset_prefix_cache/").status_code == 200
    assert greedy(http) == reference["B"]
    # a tensor the model does not have is refused before the trainer broadcasts anything
    response = httpx.post(f"{base}/update_named_param/",
                          json={"name": "model.nope.weight", "dtype": "torch.float32", "shape": [2]})
    assert response.status_code == 400 and "model.nope.weight" in response.text
    assert httpx.post(f"{base}/close_communicator/").status_code == 200
    communicator.close()


# ---- verl's and slime's pickled update_weights_from_tensor ------------------------------------------
@dataclass
class FlattenedTensorMetadata:  # pickled under SGLang's module path, as slime's payload names it
    name: str
    shape: torch.Size
    dtype: torch.dtype
    start_idx: int
    end_idx: int
    numel: int


@dataclass
class LocalSerializedTensor:
    values: list


def _sglang_modules(monkeypatch):
    for path, cls in (("sglang.srt.weight_sync.tensor_bucket", FlattenedTensorMetadata),
                      ("sglang.srt.model_executor.model_runner", LocalSerializedTensor)):
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]),
                                sys.modules.get(".".join(parts[:i])) or types.ModuleType(".".join(parts[:i])))
        cls.__module__ = path
        setattr(sys.modules[path], cls.__name__, cls)


def serialize(obj) -> bytes:
    """SGLang's MultiprocessingSerializer.serialize: a ForkingPickler dump."""
    from multiprocessing.reduction import ForkingPickler

    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(obj)
    return buffer.getvalue()


@pytest.fixture
def cpu_shared_memory(monkeypatch):
    import torch.multiprocessing as mp

    before = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")  # CPU tensors as named shared memory across processes
    yield
    mp.set_sharing_strategy(before)


def test_verl_multiprocessing_serializer_payload(http, ckpts, reference, on_a, monkeypatch,
                                                 cpu_shared_memory):
    _sglang_modules(monkeypatch)
    tensors = state_dict_of(ckpts["B"])
    # verl: [(name, LocalSerializedTensor(values=[serialize(tensor) per TP rank]))], serialized
    named = [(n, LocalSerializedTensor(values=[serialize(t)])) for n, t in tensors.items()]
    payload = base64.b64encode(serialize(named)).decode("utf-8")  # HttpServerAdapter's step
    response = http.post("/update_weights_from_tensor", json={
        "serialized_named_tensors": [payload], "load_format": None, "flush_cache": True})
    assert response.status_code == 200, response.text
    assert greedy(http) == reference["B"]


def test_slime_flattened_bucket_payload(http, ckpts, reference, on_a, monkeypatch,
                                        cpu_shared_memory):
    _sglang_modules(monkeypatch)
    tensors = state_dict_of(ckpts["B"])
    flat, metadata, start = [], [], 0
    for name, t in tensors.items():  # FlattenedTensorBucket(named_tensors=...)
        flat.append(t.flatten())
        metadata.append(FlattenedTensorMetadata(name, t.shape, t.dtype, start, start + t.numel(),
                                                t.numel()))
        start += t.numel()
    payload = base64.b64encode(serialize({"flattened_tensor": torch.cat(flat),
                                          "metadata": metadata})).decode("utf-8")
    response = http.post("/update_weights_from_tensor", json={
        "serialized_named_tensors": [payload], "load_format": "flattened_bucket",
        "flush_cache": False, "weight_version": "slime-tensor-1"})
    assert response.status_code == 200, response.text
    assert greedy(http) == reference["B"]
    # a bucket whose metadata does not fit is refused, the weights stay
    metadata[0].end_idx = 10 ** 9
    payload = base64.b64encode(serialize({"flattened_tensor": torch.cat(flat),
                                          "metadata": metadata})).decode("utf-8")
    response = http.post("/update_weights_from_tensor", json={
        "serialized_named_tensors": [payload], "load_format": "flattened_bucket"})
    assert response.status_code == 400 and "do not fit" in response.json()["message"]


def test_weights_checker_catches_corruption_and_checksums(http, ckpts, on_a):
    from rollserve.weight_sync.checker import tensor_checksum

    assert http.post("/weights_checker", json={"action": "snapshot"}).json()["success"]
    assert http.post("/weights_checker", json={"action": "reset_tensors"}).json()["success"]
    compare = http.post("/weights_checker", json={"action": "compare"})
    assert compare.status_code == 400 and "differ" in compare.json()["message"]
    assert http.post("/update_weights_from_disk", json={"model_path": ckpts["A"]}).status_code == 200
    assert http.post("/weights_checker", json={"action": "compare"}).json()["success"]
    tensors = state_dict_of(ckpts["A"])
    digests = {n: tensor_checksum(t) for n, t in list(tensors.items())[:4]}
    answer = http.post("/weights_checker", json={"action": "compare_checksum", "checksums": digests})
    assert answer.status_code == 200, answer.text
