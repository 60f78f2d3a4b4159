"""--sync distributed: the trainer broadcasts its weights over a torch.distributed group it
shares with the server, the way SGLang's, verl's and slime's trainers do.

The group is opened with an SGLang-style trainer helper: the rendezvous store wrapped in
PrefixStore(group_name) before the group's own prefix, which is the layout SGLang's
`init_custom_process_group` uses and rollserve's engine joins. The trainer is rank 0 and
hosts the rendezvous; the server joins through /init_weights_update_group. Each push
announces names, dtypes and shapes on /update_weights_from_distributed while it
broadcasts the tensors one by one (gloo between CPU processes).
"""

from __future__ import annotations

import datetime
import socket
from concurrent.futures import ThreadPoolExecutor

import torch.distributed as dist

GROUP_NAME = "grpo_weight_sync"
TIMEOUT = datetime.timedelta(seconds=300)


def sglang_style_group(backend: str, address: str, port: int, world_size: int, rank: int,
                       group_name: str):
    """A process group outside any default group, keyed as SGLang's helper keys it."""
    from torch.distributed.distributed_c10d import PrefixStore, _new_process_group_helper, _world
    from torch.distributed.rendezvous import rendezvous

    store, rank, world_size = next(rendezvous(f"tcp://{address}:{port}", rank, world_size,
                                              timeout=TIMEOUT))
    store.set_timeout(TIMEOUT)
    store = PrefixStore(group_name, store)  # the layout SGLang, verl and slime share
    group, _ = _new_process_group_helper(world_size, rank, [], backend, store,
                                         group_name=group_name, timeout=TIMEOUT)
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DistributedSync:
    """One group per run, between this trainer (rank 0) and one server (rank 1)."""

    def __init__(self, client, address: str = "127.0.0.1", backend: str = "gloo"):
        if len(client.urls) != 1:
            raise ValueError("--sync distributed pushes to one server")
        self.client = client
        self.url = client.urls[0]
        port = _free_port()
        with ThreadPoolExecutor(1) as pool:  # the server joins while this side hosts the store
            joined = pool.submit(client._call, "/init_weights_update_group", {
                "master_address": address, "master_port": port, "rank_offset": 1,
                "world_size": 2, "group_name": GROUP_NAME, "backend": backend}, url=self.url)
            self.group = sglang_style_group(backend, address, port, 2, 0, GROUP_NAME)
            joined.result()

    def push(self, named_tensors, version: str) -> dict:
        """Broadcast every tensor while the server receives them as one validated update."""
        named = [(name, t.detach().contiguous()) for name, t in named_tensors]
        body = {"names": [n for n, _ in named],
                "dtypes": [str(t.dtype).replace("torch.", "") for _, t in named],
                "shapes": [list(t.shape) for _, t in named], "group_name": GROUP_NAME,
                "flush_cache": True, "weight_version": version}
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(self.client._call, "/update_weights_from_distributed", body,
                                 url=self.url)
            for _, tensor in named:
                dist.broadcast(tensor, src=0, group=self.group)
            return answer.result()

    def close(self) -> None:
        """Both ranks leave at once (NCCL's teardown waits for every rank)."""
        with ThreadPoolExecutor(1) as pool:
            done = pool.submit(self.client._call, "/destroy_weights_update_group",
                               {"group_name": GROUP_NAME}, url=self.url)
            dist.destroy_process_group(self.group)
            done.result()
