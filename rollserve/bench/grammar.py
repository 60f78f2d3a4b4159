"""What constrained decoding costs: decode throughput with a JSON schema against the same
batch unconstrained, in one run on one device.

    python -m rollserve.bench.grammar                       # embedded SmolLM2-135M, CPU
    python -m rollserve.bench.grammar --shape llama-3.1-8b --batch-size 64   # GPU, dummy weights

The constrained run goes first: --batch-size requests (one chat prompt each, sampled at
--temperature, a seed each) under --schema, every one checked to parse. The unconstrained
run then replays it exactly: the same prompts, each asking for exactly as many tokens as
its constrained twin produced (ignore_eos), so both runs have the same batch sizes step by
step and the ratio is the grammar's cost alone (--repeats alternates the two runs and keeps
each one's best time) (mask fill on the host, mask apply on the
device, the matcher's accept, and on CUDA the overlap scheduler's sampling waiting for the
previous step). Both runs sample every token (--disable-jump-forward), so that the step
counts match. --jump-forward adds a third run: the constrained batch on an engine with
jump-forward on (scheduler/jump_forward.py; the overlap scheduler off, as jump-forward
needs), reported as its own tok/s beside the tokens it appended unsampled. A --shape model takes the embedded SmolLM2 tokenizer (a real byte-level
vocabulary that JSON can be spelled in; ids past it are lm_head padding the grammar masks).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import List

from rollserve.bench.offline import device_name, git_commit, now_iso, write_json

SMALL = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
         "properties": {"name": {"type": "string", "maxLength": 12},
                        "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
# ~the size of a tool call's arguments or an agent's action: nesting, an array, enums,
# bounded and free strings, numbers, booleans
MODERATE = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "age", "email", "role", "active", "tags", "address", "score"],
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "pattern": "[a-z]{1,10}@[a-z]{1,10}\\.(com|org|net)"},
        "role": {"enum": ["admin", "user", "guest", "auditor"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 4},
        "address": {"type": "object", "additionalProperties": False, "required": ["city", "zip"],
                    "properties": {"city": {"type": "string", "maxLength": 16},
                                   "zip": {"type": "string", "pattern": "[0-9]{5}"}}},
        "score": {"type": "number", "minimum": 0, "maximum": 100},
        "notes": {"type": "string", "maxLength": 40},
    },
}


def without_max_length(schema):
    """The schema with its strings' maxLength dropped: xgrammar fills the mask of a
    position inside a maxLength-bounded string in milliseconds (one state per character
    left), inside a free string in microseconds; the two variants show that cost apart."""
    if isinstance(schema, dict):
        return {k: without_max_length(v) for k, v in schema.items() if k != "maxLength"}
    return schema


SCHEMAS = {"small": SMALL, "moderate": MODERATE, "moderate-free-strings": without_max_length(MODERATE)}


def model_folder(args) -> str:
    """--model-path, or a --shape folder (config + SmolLM2's tokenizer) for dummy weights."""
    from rollserve.frontend.default_model import default_model_path

    if not args.shape:
        return args.model_path or default_model_path()
    from transformers import AutoTokenizer

    from rollserve.bench.synthetic_model import materialize

    folder = materialize(args.shape, os.path.join(tempfile.mkdtemp(prefix="grammar-bench-"), args.shape))
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(folder)
    return folder


def chat_prompts(tokenizer, n: int) -> List[List[int]]:
    return [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Describe user number {i} of our service as JSON."}],
        tokenize=True, add_generation_prompt=True, return_dict=False) for i in range(n)]


def run(args) -> dict:
    import rollserve
    from transformers import AutoTokenizer

    path = model_folder(args)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = chat_prompts(tokenizer, args.batch_size)
    schema = json.dumps(SCHEMAS[args.schema])
    kwargs = {"dtype": args.dtype, "log_level": "warning"}
    for name in ("device", "max_total_tokens", "disable_cuda_graph"):
        if getattr(args, name):
            kwargs[name] = getattr(args, name)
    if args.shape:
        kwargs["load_format"] = "dummy"
    constrained = [{"json_schema": schema, "temperature": args.temperature, "seed": 1000 + i,
                    "max_new_tokens": args.max_new_tokens} for i in range(len(prompts))]
    with rollserve.Engine(model_path=path, disable_jump_forward=True, **kwargs) as engine:
        start = time.perf_counter()  # warm-up, and the grammar's first compile
        engine.generate(input_ids=prompts[:2], sampling_params=dict(constrained[0], max_new_tokens=4))
        first_compile_s = time.perf_counter() - start
        outs, constrained_s = timed(engine, prompts, constrained)
        lengths = [o["meta_info"]["completion_tokens"] for o in outs]
        replay = [{"max_new_tokens": n, "ignore_eos": True, "temperature": args.temperature,
                   "seed": 1000 + i} for i, n in enumerate(lengths)]
        free, free_s = timed(engine, prompts, replay)
        same_lengths = True
        for _ in range(args.repeats - 1):  # alternate, keep each side's best: less noise
            again, seconds = timed(engine, prompts, constrained)
            # seeded, so the same answers unless batching moves a float's last bit
            same_lengths &= [o["meta_info"]["completion_tokens"] for o in again] == lengths
            constrained_s = min(constrained_s, seconds)
            free_s = min(free_s, timed(engine, prompts, replay)[1])
    parsed = sum(1 for o in outs if _parses(o["text"]))
    tokens = sum(lengths)
    assert sum(o["meta_info"]["completion_tokens"] for o in free) == tokens
    report = {
        "date": now_iso(), "commit": git_commit(), "device": device_name(),
        "model": args.shape or path, "schema": args.schema, "batch_size": args.batch_size,
        "temperature": args.temperature, "repeats": args.repeats, "output_tokens": tokens,
        "mean_output_len": round(tokens / len(lengths), 1),
        "finished_by_grammar": sum(1 for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"),
        "outputs_that_parse": parsed, "repeats_gave_the_same_lengths": same_lengths, "first_request_with_compile_s": round(first_compile_s, 3),
        "unconstrained_tok_s": round(tokens / free_s, 2),
        "constrained_tok_s": round(tokens / constrained_s, 2),
        "ratio_constrained_over_unconstrained": round(free_s / constrained_s, 4),
        "grammar_cost_pct": round(100 * (constrained_s / free_s - 1), 2),
    }
    if args.jump_forward:
        report.update(jump_forward_run(path, kwargs, prompts, constrained, args.repeats))
    return report


def jump_forward_run(path, kwargs, prompts, constrained, repeats: int) -> dict:
    """The constrained batch with jump-forward on (and overlap off, which it needs)."""
    import rollserve

    with rollserve.Engine(model_path=path, disable_overlap_schedule=True, **kwargs) as engine:
        engine.generate(input_ids=prompts[:2], sampling_params=dict(constrained[0], max_new_tokens=4))
        before = engine.get_server_info().get("jump_forward_tokens_total", 0)
        best, outs = None, []
        for _ in range(repeats):
            outs, seconds = timed(engine, prompts, constrained)
            best = seconds if best is None else min(best, seconds)
        jumped = engine.get_server_info().get("jump_forward_tokens_total", 0) - before
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {"jump_forward_tok_s": round(tokens / best, 2),
            "jump_forward_output_tokens": tokens,
            "jump_forward_outputs_that_parse": sum(1 for o in outs if _parses(o["text"])),
            "jump_forward_tokens_per_run": round(jumped / repeats, 1)}


def timed(engine, prompts, params):
    """One batch from an empty prefix cache: (results, seconds)."""
    engine.flush_cache()
    start = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    return outs, time.perf_counter() - start


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M")
    p.add_argument("--shape", default=None, help="a bench/configs shape with dummy weights")
    p.add_argument("--schema", choices=sorted(SCHEMAS), default="small")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=2, help="runs of each side; the best counts")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--jump-forward", action="store_true",
                   help="also time the constrained batch with jump-forward on (overlap off)")
    p.add_argument("--output-file", default=None)
    args = p.parse_args(argv)
    report = run(args)
    print(f"{report['device']}, {report['model']}, schema {report['schema']}, batch "
          f"{report['batch_size']}, {report['output_tokens']} output tokens "
          f"(mean {report['mean_output_len']}), {report['outputs_that_parse']}/"
          f"{report['batch_size']} parse")
    print(f"  unconstrained (baseline): {report['unconstrained_tok_s']:>9.1f} tok/s")
    print(f"  constrained (json_schema): {report['constrained_tok_s']:>8.1f} tok/s   ratio "
          f"{report['ratio_constrained_over_unconstrained']:.3f} "
          f"({report['grammar_cost_pct']:+.1f}% time)")
    if args.jump_forward:
        print(f"  constrained, jump-forward (no overlap): {report['jump_forward_tok_s']:>8.1f} tok/s, "
              f"{report['jump_forward_tokens_per_run']} tokens per run appended unsampled, "
              f"{report['jump_forward_outputs_that_parse']}/{report['batch_size']} parse")
    if args.output_file:
        write_json(report, args.output_file)
    return report


if __name__ == "__main__":
    main()
