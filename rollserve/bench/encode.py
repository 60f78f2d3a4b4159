"""Encode / classify throughput: items/s of rollserve.Engine against transformers' forward
on the same model and the same batches of mixed-length inputs, in one run, side by side.

    python -m rollserve.bench.encode --task both --num-items 256 --batch-size 32 \\
        --output-file bench/results/encode_cpu.json

encode runs the default embedding model (all-MiniLM-L6-v2) unless --embedding-model;
classify runs --reward-model, by default SmolLM2-135M with a seeded random 1-label score
head (LlamaForSequenceClassification) built in a temporary folder. rollserve is timed
twice: batch by batch as transformers is, and with every item in one call (continuous
batching). max_abs_diff compares the two backends' outputs item by item. On a shared
machine, --threads 1 keeps OpenMP threads from waiting on each other.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from datetime import datetime, timezone
from typing import List, Optional

import torch
import torch.nn.functional as F

from rollserve.bench.offline import device_name, git_commit, write_json

REWARD_HEAD_SEED = 0


def make_items(num: int, min_len: int, max_len: int, vocab: int, seed: int,
               wrap: tuple = ((), ())) -> List[List[int]]:
    """Random token ids of uniformly mixed lengths (special tokens kept out of the body);
    `wrap` = (ids before, ids after), e.g. BERT's [CLS] and [SEP]."""
    rng = random.Random(seed)
    before, after = wrap
    body = max_len - len(before) - len(after)
    return [list(before) + [rng.randrange(1000, vocab) for _ in range(rng.randint(min_len, body))]
            + list(after) for _ in range(num)]


def batches(items: List[List[int]], size: int) -> List[List[List[int]]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def build_reward_model(out_dir: str) -> str:
    """SmolLM2-135M (the embedded default model) with a seeded random 1-label score head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rollserve.frontend.default_model import default_model_path

    source = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(REWARD_HEAD_SEED)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ---- rollserve -------------------------------------------------------------------------------
def run_rollserve(task: str, model_path: str, items, batch_size: int, engine_kwargs: dict):
    import rollserve

    with rollserve.Engine(model_path=model_path, **engine_kwargs) as engine:
        call = engine.encode if task == "encode" else engine.classify
        call(input_ids=items[:2])  # warm-up
        engine.flush_cache()  # no timed run reuses the prefixes of an earlier one
        start = time.perf_counter()
        outputs = [r["embedding"] for batch in batches(items, batch_size)
                   for r in call(input_ids=batch)]
        per_batch = time.perf_counter() - start
        engine.flush_cache()
        start = time.perf_counter()
        call(input_ids=items)
        all_at_once = time.perf_counter() - start
    tokens = sum(len(i) for i in items)
    return ([_figures(f"rollserve (bs={batch_size})", per_batch, len(items), tokens),
             _figures("rollserve (all items in one call)", all_at_once, len(items), tokens)],
            torch.tensor(outputs))


# ---- transformers ----------------------------------------------------------------------------
def run_transformers(task: str, model_path: str, items, batch_size: int, spec, dtype, device):
    from transformers import AutoModel, AutoModelForSequenceClassification

    auto = AutoModel if task == "encode" else AutoModelForSequenceClassification
    model = auto.from_pretrained(model_path, dtype=dtype).to(device).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    forward = lambda batch: _hf_outputs(model, batch, pad, spec, task, device)  # noqa: E731
    forward(items[:2])  # warm-up
    start = time.perf_counter()
    outputs = torch.cat([forward(batch) for batch in batches(items, batch_size)])
    elapsed = time.perf_counter() - start
    row = _figures(f"transformers forward (bs={batch_size})", elapsed, len(items),
                   sum(len(i) for i in items))
    return row, outputs


@torch.no_grad()
def _hf_outputs(model, batch, pad: int, spec, task: str, device) -> torch.Tensor:
    """One right-padded forward; sentence-transformers-style pooling for embeddings,
    transformers' own last-non-pad scoring for classifiers."""
    lengths = torch.tensor([len(ids) for ids in batch], device=device)
    width = int(lengths.max())
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in batch], device=device)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    out = model(input_ids=input_ids, attention_mask=mask)
    if task == "classify":
        return out.logits.float().cpu()
    hidden = out.last_hidden_state.float()
    if spec.method == "mean":
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    elif spec.method == "last":
        pooled = hidden[torch.arange(len(batch), device=device), lengths - 1]
    elif spec.method == "cls":
        pooled = hidden[:, 0]
    else:
        raise ValueError(f"the transformers baseline does not implement {spec.method} pooling")
    return (F.normalize(pooled, p=2, dim=-1) if spec.normalize else pooled).cpu()


def _figures(name: str, elapsed: float, items: int, tokens: int) -> dict:
    return {"backend": name, "seconds": round(elapsed, 3), "items": items, "tokens": tokens,
            "items_per_s": round(items / elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1)}


# ---- one task ----------------------------------------------------------------------------------
def bench_task(task: str, model_path: str, args) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from rollserve.executor.pooling_model import pooling_spec
    from rollserve.executor.model_loader import resolve_dtype

    hf_config = AutoConfig.from_pretrained(model_path)
    spec = pooling_spec(model_path, is_embedding=True, hf_config=hf_config)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    wrap = ([tokenizer.cls_token_id], [tokenizer.sep_token_id]) \
        if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None else ((), ())
    items = make_items(args.num_items, args.min_len, args.max_len, hf_config.vocab_size,
                       args.seed, wrap)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(hf_config, args.dtype, device)
    engine_kwargs = {"dtype": args.dtype, "is_embedding": True}
    if args.device:
        engine_kwargs["device"] = args.device
    if args.max_total_tokens:
        engine_kwargs["max_total_tokens"] = args.max_total_tokens
    rows, ours = run_rollserve(task, model_path, items, args.batch_size, engine_kwargs)
    hf_row, theirs = run_transformers(task, model_path, items, args.batch_size, spec, dtype, device)
    rows.append(hf_row)
    return {"task": task, "model_path": model_path, "pooling": spec.method,
            "normalize": spec.normalize, "dtype": str(dtype).removeprefix("torch."),
            "max_abs_diff": float((ours - theirs).abs().max()),
            "ratio_items_per_s": round(rows[0]["items_per_s"] / hf_row["items_per_s"], 2),
            "results": rows}


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=("encode", "classify", "both"), default="both")
    p.add_argument("--embedding-model", default=None, help="default: all-MiniLM-L6-v2")
    p.add_argument("--reward-model", default=None,
                   help="default: SmolLM2-135M with a random score head (built in a temp folder)")
    p.add_argument("--num-items", type=int, default=256)
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for both backends (OMP_NUM_THREADS of the engine's processes "
                        "too); fewer threads keep timings steadier on a shared machine")
    p.add_argument("--output-file", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by the spawned scheduler
        torch.set_num_threads(args.threads)
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews CPU timings

    from rollserve.executor.pooling_model import default_embedding_model_path

    tasks = ["encode", "classify"] if args.task == "both" else [args.task]
    temp_dir = None
    sections = []
    try:
        for task in tasks:
            if task == "encode":
                path = args.embedding_model or default_embedding_model_path()
            else:
                path = args.reward_model or build_reward_model(
                    temp_dir := tempfile.mkdtemp(prefix="rollserve-bench-rm-"))
            sections.append(bench_task(task, path, args))
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    report = {
        "benchmark": "encode", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(),
        "commit": git_commit(), "load_average_1m_before": load_before,
        "num_items": args.num_items,
        "lengths": [args.min_len, args.max_len], "batch_size": args.batch_size, "tasks": sections,
    }
    print_table(report)
    if args.output_file:
        write_json(report, args.output_file)
    return report


def print_table(report: dict) -> None:
    print(f"\nencode/classify: {report['num_items']} items of {report['lengths'][0]}-"
          f"{report['lengths'][1]} tokens, {report['device']}, {report['date']}")
    print(f"{'task':<10}{'backend':<36}{'seconds':>9}{'items/s':>10}{'tokens/s':>11}")
    for section in report["tasks"]:
        for r in section["results"]:
            print(f"{section['task']:<10}{r['backend']:<36}{r['seconds']:>9.2f}"
                  f"{r['items_per_s']:>10.1f}{r['tokens_per_s']:>11.0f}")
        print(f"{section['task']:<10}{'ratio rollserve (bs) / transformers':<36}{'':>9}"
              f"{section['ratio_items_per_s']:>10.2f}   max |diff| {section['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
