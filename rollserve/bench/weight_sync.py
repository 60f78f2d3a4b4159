"""Weight-update throughput: how long each update path takes to replace every weight.

    python -m rollserve.bench.weight_sync                 # default model + a dummy ~1B Llama
    python -m rollserve.bench.weight_sync --models default --repeats 3
    python -m rollserve.bench.weight_sync --models smollm2-135m llama-3.2-1b   # dummy weights only

`default` is the embedded model (its package must be installed); every other choice is
built from a config alone with dummy weights: `dummy-1b` (a TinyLlama-1.1B shape with
SmolLM2's vocabulary) and the real architectures' configs in rollserve/bench/configs.

For each model, the bench process plays the trainer: it makes a full set of new
weights (random, the engine's names, shapes and dtype) and pushes it through

* disk: saved as safetensors shards, then update_weights_from_disk (page cache warm:
  the files were just written; the time covers validation + reading + copying);
* tensor: update_weights_from_tensor in buckets of --bucket-mb (CUDA IPC handles when
  the weights are on the GPU, safetensors bytes otherwise);
* distributed: a torch.distributed group (NCCL when a second GPU can hold the trainer's
  weights, else gloo through host memory), flattened buckets of --bucket-mb.

Every update is checked (get_weights_by_name equals what was pushed). GB/s is the
bytes of the weights in the engine's dtype over the wall time of the update.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from typing import Dict, List, Tuple

import torch

from rollserve.bench.offline import device_name, git_commit, write_json
from rollserve.bench.synthetic_model import SHAPES
from rollserve.rollout.payloads import tensor_buckets

# A TinyLlama-1.1B-shaped config: about 1.1B parameters with SmolLM2's vocabulary.
DUMMY_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                tie_word_embeddings=False)
SMOLLM2_VOCAB = 49152
NamedTensors = List[Tuple[str, torch.Tensor]]


# ---- the models ------------------------------------------------------------------------------------
def dummy_model_folder(root: str, label: str) -> str:
    """A folder the engine loads with --load-format dummy: config + synthetic tokenizer."""
    from transformers import LlamaConfig

    from rollserve.bench.synthetic_model import materialize, save_synthetic_tokenizer

    path = os.path.join(root, label)
    if label != "dummy-1b":
        return materialize(label, path)
    LlamaConfig(vocab_size=SMOLLM2_VOCAB, bos_token_id=1, eos_token_id=2, **DUMMY_1B,
                architectures=["LlamaForCausalLM"]).save_pretrained(path)
    save_synthetic_tokenizer(path, SMOLLM2_VOCAB)
    return path


def weight_spec(model_path: str, dtype: torch.dtype) -> Dict[str, Tuple[tuple, torch.dtype]]:
    """HF name -> (shape, dtype) of every tensor the engine's model loads (built on meta)."""
    from transformers import AutoConfig

    from rollserve.executor.models import get_model_class

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = get_model_class(config)(config, dtype)
    return model.checkpoint_spec()


def new_weights(spec, device: str, seed: int) -> NamedTensors:
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for name, (shape, dtype) in spec.items():
        t = torch.empty(shape, dtype=dtype, device=device)
        t.fill_(1.0) if name.endswith("norm.weight") else t.normal_(0.0, 0.02, generator=generator)
        out.append((name, t))
    return out


def save_shards(named: NamedTensors, model_dir: str, out_dir: str, shard_bytes: int) -> str:
    from safetensors.torch import save_file

    os.makedirs(out_dir)
    for name in os.listdir(model_dir):
        if name.endswith((".json", ".txt", ".model")) and "safetensors" not in name:
            shutil.copy(os.path.join(model_dir, name), out_dir)
    shards = tensor_buckets(named, shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: t.detach().cpu().contiguous() for n, t in shard}, os.path.join(out_dir, file),
                  metadata={"format": "pt"})
        weight_map.update({n: file for n, _ in shard})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return out_dir


# ---- the three paths ---------------------------------------------------------------------------------
def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check(result: dict) -> None:
    if not result.get("success"):
        raise RuntimeError(f"update failed: {result.get('message')}")


def verify(engine, named: NamedTensors) -> None:
    for name, t in (named[0], named[len(named) // 2], named[-1]):
        got = torch.tensor(engine.get_weights_by_name(name, 16))
        want = t.detach().reshape(-1)[:16].float().cpu()
        if not torch.equal(got, want):
            raise RuntimeError(f"{name}: the engine does not hold the pushed values")


def run_disk(engine, path: str, version: str) -> None:
    check(engine.update_weights_from_disk(path, weight_version=version))


def run_tensor(engine, parts: List[NamedTensors], version: str) -> None:
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        check(engine.update_weights_from_tensor(part, flush_cache=last,
                                                weight_version=version if last else None))


class DistributedTrainer:
    """The bench process as rank 0 of a group with the engine (rank 1)."""

    def __init__(self, engine, backend: str, group_name: str):
        from rollserve.api.server import free_port
        from rollserve.weight_sync import distributed

        self.engine, self.group_name, self.distributed = engine, group_name, distributed
        port, joined = free_port(), {}
        thread = threading.Thread(target=lambda: joined.update(r=engine.init_weights_update_group(
            "127.0.0.1", port, 1, 2, group_name, backend)))
        thread.start()
        self.group = distributed.init_custom_process_group(backend, "127.0.0.1", port, 2, 0,
                                                           group_name)
        thread.join()
        check(joined["r"])

    def push(self, parts: List[NamedTensors], version: str) -> None:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            answer = {}
            receiving = threading.Thread(target=lambda: answer.update(r=self.engine.update_weights_from_distributed(
                [n for n, _ in part], [str(t.dtype) for _, t in part], [list(t.shape) for _, t in part],
                self.group_name, last, version if last else None, self.distributed.FLATTENED_BUCKET)))
            receiving.start()
            self.distributed.broadcast_named_tensors(self.group, part, self.distributed.FLATTENED_BUCKET)
            receiving.join()
            check(answer["r"])

    def close(self) -> None:
        check(self.distributed.destroy_group_with_engine(
            self.group, lambda: self.engine.destroy_weights_update_group(self.group_name)))


# ---- one model -------------------------------------------------------------------------------------
def bench_model(label: str, model_path: str, engine_kwargs: dict, args, workdir: str) -> List[dict]:
    import rollserve

    rows = []
    with rollserve.Engine(model_path, max_total_tokens=2048, log_level="warning", **engine_kwargs) as engine:
        runner_dtype = _engine_dtype(engine, model_path)
        on_cuda = engine.server_args.resolved_device().startswith("cuda")
        spec = weight_spec(model_path, runner_dtype)
        named = new_weights(spec, "cuda" if on_cuda else "cpu", seed=1)
        nbytes = sum(t.numel() * t.element_size() for _, t in named)
        params = sum(t.numel() for _, t in named)
        parts = tensor_buckets(named, args.bucket_mb << 20)

        def record(path: str, seconds: List[float], note: str) -> None:
            best = min(seconds)
            rows.append({"model": label, "params_b": round(params / 1e9, 3), "dtype": str(runner_dtype),
                         "path": path, "gb": round(nbytes / 1e9, 3), "seconds": round(best, 3),
                         "gb_s": round(nbytes / 1e9 / best, 3), "runs_s": [round(s, 3) for s in seconds],
                         "buckets": len(parts) if path != "disk" else None, "note": note})
            print(f"  {label:<14} {path:<24} {best:8.3f} s  {nbytes / 1e9 / best:7.2f} GB/s", flush=True)

        disk_dir = save_shards(named, model_path, os.path.join(workdir, f"{label}-ckpt"),
                               args.shard_mb << 20)
        record("disk", [timed(lambda: run_disk(engine, disk_dir, f"disk-{i}"))
                        for i in range(args.repeats)], "safetensors shards, page cache warm")
        verify(engine, named)
        shutil.rmtree(disk_dir)

        transport = "cuda_ipc" if on_cuda else "safetensors bytes"
        record("tensor", [timed(lambda: run_tensor(engine, parts, f"tensor-{i}"))
                          for i in range(args.repeats)], f"{transport}, {args.bucket_mb} MiB buckets")
        verify(engine, named)

        backend, trainer_named = _distributed_setup(named, on_cuda)
        trainer = DistributedTrainer(engine, backend, "bench")
        try:
            trainer_parts = tensor_buckets(trainer_named, args.bucket_mb << 20)
            record(f"distributed ({backend})",
                   [timed(lambda: trainer.push(trainer_parts, f"dist-{i}")) for i in range(args.repeats)],
                   f"flattened {args.bucket_mb} MiB buckets")
            verify(engine, named)
        finally:
            trainer.close()
    return rows


def _engine_dtype(engine, model_path: str) -> torch.dtype:
    from transformers import AutoConfig

    from rollserve.executor.model_loader import resolve_dtype

    args = engine.server_args
    return resolve_dtype(AutoConfig.from_pretrained(model_path), args.dtype, args.resolved_device())


def _distributed_setup(named: NamedTensors, on_cuda: bool) -> Tuple[str, NamedTensors]:
    """NCCL needs the trainer on another GPU than the engine (cuda:0); else gloo on the host."""
    if on_cuda and torch.cuda.device_count() >= 2:
        torch.cuda.set_device(1)  # this process's NCCL rank works on the trainer's GPU
        return "nccl", [(n, t.to("cuda:1")) for n, t in named]
    if on_cuda:
        return "gloo", [(n, t.cpu()) for n, t in named]
    return "gloo", named


# ---- report ----------------------------------------------------------------------------------------
def default_output_file(device: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in device.split(" (")[0].lower()).strip("-")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return os.path.join("bench", "results", f"weight_sync-{date}-{slug}.json")


def print_table(report: dict) -> None:
    print(f"\nweight sync: {report['device']}, {report['date']}")
    print(f"{'model':<14}{'params':>8}{'dtype':>16}  {'path':<22}{'GB':>7}{'seconds':>10}{'GB/s':>8}")
    for r in report["results"]:
        print(f"{r['model']:<14}{r['params_b']:>7.2f}B{r['dtype']:>16}  {r['path']:<22}{r['gb']:>7.2f}"
              f"{r['seconds']:>10.3f}{r['gb_s']:>8.2f}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["default", "dummy-1b"],
                   choices=["default", "dummy-1b", *SHAPES])
    p.add_argument("--dummy-dtype", default="bfloat16", help="engine dtype of the dummy-weight models")
    p.add_argument("--bucket-mb", type=int, default=512)
    p.add_argument("--shard-mb", type=int, default=1024, help="safetensors shard size for the disk path")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", default=None, help="where checkpoints are written (default: a temp dir)")
    p.add_argument("--output-file", default=None,
                   help="default: bench/results/weight_sync-<date>-<device>.json")
    args = p.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="rollserve-bench-ws-", dir=args.workdir)
    rows = []
    try:
        for label in args.models:
            print(f"{label}:", flush=True)
            if label == "default":
                from rollserve.frontend.default_model import default_model_path

                rows += bench_model(label, default_model_path(), {}, args, workdir)
            else:
                path = dummy_model_folder(workdir, label)
                rows += bench_model(label, path, {"load_format": "dummy", "dtype": args.dummy_dtype},
                                    args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {"benchmark": "weight_sync", "device": device_name(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "commit": git_commit(), "torch": torch.__version__, "repeats": args.repeats, "bucket_mb": args.bucket_mb,
              "results": rows}
    print_table(report)
    output = args.output_file or default_output_file(report["device"])
    write_json(report, output)
    print(f"\nwritten to {output}")
    return report


if __name__ == "__main__":
    main()
