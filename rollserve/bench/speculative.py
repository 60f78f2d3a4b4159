"""Speculative decoding's decode speed beside plain decoding of the same run (issue #20).

    python -m rollserve.bench.speculative --batch-size 1 8 32                  # SmolLM2, CPU or GPU
    python -m rollserve.bench.speculative --shape llama-3.1-8b --batch-size 1 8 32   # dummy weights
    python -m rollserve.bench.speculative --shape llama-3.1-8b --algorithm EAGLE      # + a dummy head
    python -m rollserve.bench.speculative --shape llama-3.1-8b --algorithm EAGLE \
        --eagle-topk 4 --num-steps 3 --num-draft-tokens 8                          # + tree drafts

For each batch size, greedy requests on a repetitive workload (each prompt a random
phrase repeated) decode in-process through the scheduler three times:
* `plain`: the scheduler the server would run (overlap + decode CUDA graphs on a GPU);
  the speculative runs are the server's too (on a GPU overlapped as in
  scheduler/overlap_speculative.py; `--disable-overlap-schedule` for both without overlap);
* `ngram`: --speculative-algorithm NGRAM (drafts from the request's own context; a chain,
  or with --ngram-max-bfs-breadth > 1 trees of earlier continuations);
* `oracle`: the same verify path with drafts taken from the plain run's own output, so
  every draft holds by construction (up to batch-variant rounding on a GPU): the verify
  cost alone, the ceiling a perfect draft model would reach at this draft length;
* `eagle` (with `--algorithm EAGLE`): the oracle's drafts again, but through a dummy EAGLE
  head (random weights, the target's shape) that runs as a real one would (its draft
  forwards, the hidden states every target forward keeps, returned by the graphs): the
  verify cost plus the draft's, at forced acceptance. Runs after the others, since a draft
  model changes the shared model runner. With `--eagle-topk` k > 1 the head grows real
  trees (k children per frontier node, --num-steps levels, --num-draft-tokens - 1 nodes)
  and the oracle's tokens replace the tree's first branch (its siblings kept distinct): the
  tree's draft and verify cost (tree mask, torch attention path on GPU) at forced
  acceptance along one branch.
Decode tok/s counts the tokens generated once every request is past its prompt, over the
wall time from there; the accept length is tokens per verify step of one request
(SGLang's). `same_as_plain` says whether the greedy outputs equal the plain run's (on a GPU
in bf16 an extend and a decode kernel may round a near-tie apart, as chunked prefill may).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import time
from typing import Dict, List

import torch

from rollserve.bench.offline import (add_engine_arguments, device_name, git_commit, now_iso,
                                     resolve_model, write_json)


class OracleDrafter:
    """Drafts the tokens the plain run produced next: acceptance forced by construction."""

    def __init__(self, outputs: Dict[str, List[int]], num_drafts: int):
        self.outputs = outputs
        self.num_drafts = num_drafts

    def propose(self, req, most: int) -> List[int]:
        done = len(req.output_ids)
        return self.outputs[req.rid][done:done + min(most, self.num_drafts)]


class OracleTree:
    """The head's real tree (its draft work done), whose first branch becomes the plain run's
    next tokens: acceptance forced down that branch."""

    def __init__(self, real_propose, outputs: Dict[str, List[int]], vocab: int):
        self.real, self.outputs, self.vocab = real_propose, outputs, vocab

    def propose(self, req, most: int):
        tree = self.real(req, most)
        if not getattr(tree, "tokens", None):
            return tree
        want = self.outputs[req.rid][len(req.output_ids):]
        tokens, parents, node = list(tree.tokens), tree.parents, -1
        for token in want:
            kids = [i for i, p in enumerate(parents) if p == node]
            if not kids:
                break
            node = kids[0]
            for sibling in kids[1:]:  # siblings stay distinct from the branch's token
                if tokens[sibling] == token:
                    taken = {tokens[k] for k in kids}
                    tokens[sibling] = next(t for t in range(self.vocab) if t not in taken)
            tokens[node] = token
        return dataclasses.replace(tree, tokens=tokens)


def dummy_eagle_head(runner, folder: str) -> str:
    """An EAGLE head of the target's shape with small random weights, saved as SGLang's
    LlamaForCausalLMEagle folder: what its forward costs, not what it predicts."""
    import copy
    import os

    from safetensors.torch import save_file

    from rollserve.executor.draft_models import EagleDraft
    from rollserve.executor.models.weights import checkpoint_spec, checkpoint_targets

    config = copy.deepcopy(runner.hf_config)
    config.num_hidden_layers, config.architectures = 1, ["LlamaForCausalLMEagle"]
    head = EagleDraft(config, runner.model, runner.dtype)
    gen = torch.Generator().manual_seed(0)
    tensors = {name: (torch.ones(shape) if "norm" in name else torch.randn(shape, generator=gen) * 0.02
                      ).to(dtype) for name, (shape, dtype) in checkpoint_spec(checkpoint_targets(head)).items()}
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    config.save_pretrained(folder)
    return folder


def eagle_oracle_rows(args, plain, base_outputs: Dict[int, dict], prompts_of) -> Dict[int, dict]:
    """bs -> the `eagle` run: a dummy head's real draft work, the oracle's drafts."""
    import tempfile

    from rollserve.scheduler.model_drafter import ModelDrafter
    from rollserve.scheduler.overlap_scheduler import make_scheduler

    folder = dummy_eagle_head(plain.runner, tempfile.mkdtemp(prefix="eagle-dummy-"))
    config = dataclasses.replace(plain.config, speculative_algorithm="EAGLE",
                                 speculative_draft_model_path=folder,
                                 speculative_num_draft_tokens=args.num_draft_tokens,
                                 speculative_eagle_topk=args.eagle_topk,
                                 speculative_num_steps=args.num_steps)
    spec = make_scheduler(config, plain.runner, plain.stop_checker.tokenizer, plain.eos_token_ids)
    drafter: ModelDrafter = spec.drafter
    real = drafter.propose
    rows = {}
    for bs, outputs in base_outputs.items():
        prompts = prompts_of(bs)
        drafter.propose = (OracleTree(real, outputs, plain.runner.vocab_size).propose
                           if args.eagle_topk > 1
                           else OracleDrafter(outputs, args.num_draft_tokens - 1).propose)
        run(spec, prompts[:2], 8)  # warm-up
        rows[bs] = run(spec, prompts, args.output_len)
    return rows


def repetitive_prompts(batch: int, input_len: int, vocab: int, seed: int) -> List[List[int]]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(batch):
        phrase = [rng.randrange(100, vocab - 1) for _ in range(rng.randint(8, 24))]
        prompts.append((phrase * (input_len // len(phrase) + 1))[:input_len])
    return prompts


def run(scheduler, prompts: List[List[int]], output_len: int) -> dict:
    from rollserve.core.io import TokenizedGenerateReq
    from rollserve.core.sampling_params import SamplingParams
    from rollserve.scheduler.stats import SpecCounters

    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_new_tokens=output_len, temperature=0, ignore_eos=True)
        params.normalize_and_validate()
        scheduler.add_request(TokenizedGenerateReq(rid=f"r{i}", input_ids=prompt,
                                                   sampling_params=params))
    outputs: Dict[str, List[int]] = {f"r{i}": [] for i in range(len(prompts))}
    if scheduler.stats.spec is not None:
        scheduler.stats.spec = SpecCounters()  # this run's acceptance only
    start = None
    tokens_at_start = 0
    while scheduler.has_work():
        for out in scheduler.step():
            outputs[out.rid].extend(out.new_ids)
        if start is None and not scheduler.waiting and scheduler.prefilling is None:
            _sync(scheduler)
            start, tokens_at_start = time.perf_counter(), sum(map(len, outputs.values()))
    for out in scheduler.drain():
        outputs[out.rid].extend(out.new_ids)
    _sync(scheduler)
    elapsed = time.perf_counter() - start
    decoded = sum(map(len, outputs.values())) - tokens_at_start
    row = {"decode_tok_s": round(decoded / elapsed, 1), "decode_s": round(elapsed, 3),
           "outputs": outputs}
    spec = scheduler.stats.spec
    if spec is not None:
        row.update(accept_length=round(spec.accept_length, 3), accept_rate=round(spec.accept_rate, 3),
                   verify_ct=spec.verify_ct)
    scheduler.flush_cache()
    return row


def _sync(scheduler) -> None:
    if scheduler.runner.device.type == "cuda":
        torch.cuda.synchronize(scheduler.runner.device)


def make_schedulers(args):
    from rollserve.core.tokenizer import eos_token_ids, load_tokenizer
    from rollserve.executor.model_runner import ModelRunner
    from rollserve.frontend.server_args import ServerArgs
    from rollserve.scheduler.overlap_scheduler import make_scheduler

    server_args = ServerArgs(
        model_path=args.model_path, device=args.device, dtype=args.dtype, load_format=args.load_format,
        max_total_tokens=args.max_total_tokens or max(args.batch_size) * (args.input_len + args.output_len + 64),
        max_running_requests=max(args.batch_size), context_length=args.input_len + args.output_len + 64,
        mem_fraction_static=args.mem_fraction_static, cuda_graph_max_bs=args.cuda_graph_max_bs,
        attention_backend=args.attention_backend, disable_cuda_graph=args.disable_cuda_graph,
        disable_overlap_schedule=args.disable_overlap_schedule, decode_log_interval=0,
        grammar_backend="none")  # no constrained requests here
    config = server_args.scheduler_config()
    runner = ModelRunner(config.executor)
    tokenizer = load_tokenizer(args.model_path)
    eos = eos_token_ids(args.model_path, tokenizer)
    spec_config = dataclasses.replace(config, speculative_algorithm="NGRAM",
                                      speculative_num_draft_tokens=args.num_draft_tokens,
                                      speculative_ngram_max_bfs_breadth=args.ngram_max_bfs_breadth)
    plain = make_scheduler(config, runner, tokenizer, eos)
    spec = make_scheduler(spec_config, runner, tokenizer, eos)  # overlapped too, as the server's
    return plain, spec


def main(argv=None) -> dict:
    from rollserve.scheduler.overlap_speculative import OverlapSpeculativeScheduler

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M")
    p.add_argument("--shape", default=None, help="a config under rollserve/bench/configs (dummy weights)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--num-draft-tokens", type=int, default=4,
                   help="tokens per verify step: the last one and num-draft-tokens - 1 drafts")
    p.add_argument("--ngram-max-bfs-breadth", type=int, default=1,
                   help="NGRAM: > 1 drafts trees (scheduler/ngram_tree.py; the server's default "
                        "is 10); 1: the chain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--algorithm", choices=["NGRAM", "EAGLE"], default="NGRAM",
                   help="EAGLE: also a dummy EAGLE head's run at forced acceptance")
    p.add_argument("--eagle-topk", type=int, default=1,
                   help="EAGLE: > 1 drafts trees (--speculative-eagle-topk)")
    p.add_argument("--num-steps", type=int, default=None,
                   help="EAGLE trees: levels (--speculative-num-steps; default num-draft-tokens - 1)")
    add_engine_arguments(p)
    p.add_argument("--output-file", default=None)
    args = p.parse_args(argv)
    vocab = resolve_model(args)
    plain, spec = make_schedulers(args)
    ngram_drafter = spec.drafter
    rows, base_outputs = [], {}

    def prompts_of(bs):
        return repetitive_prompts(bs, args.input_len, vocab, args.seed + bs)

    for bs in args.batch_size:
        prompts = prompts_of(bs)
        spec.drafter = ngram_drafter
        for scheduler in (plain, spec):  # warm-up (kernels, graphs, allocator) outside the timing
            run(scheduler, prompts[:2], 8)
        base = run(plain, prompts, args.output_len)
        base_outputs[bs] = base["outputs"]
        ngram = run(spec, prompts, args.output_len)
        spec.drafter = OracleDrafter(base["outputs"], args.num_draft_tokens - 1)
        oracle = run(spec, prompts, args.output_len)
        row = {"batch_size": bs, "plain_tok_s": base["decode_tok_s"]}
        for name, r in (("ngram", ngram), ("oracle", oracle)):
            row[name] = {k: v for k, v in r.items() if k != "outputs"}
            row[name]["speedup"] = round(r["decode_tok_s"] / base["decode_tok_s"], 3)
            row[name]["same_as_plain"] = r["outputs"] == base["outputs"]
        rows.append(row)
        gc.collect()
    if args.algorithm == "EAGLE":
        for row, (bs, r) in zip(rows, eagle_oracle_rows(args, plain, base_outputs, prompts_of).items()):
            row["eagle"] = {k: v for k, v in r.items() if k != "outputs"}
            row["eagle"]["speedup"] = round(r["decode_tok_s"] / row["plain_tok_s"], 3)
            row["eagle"]["same_as_plain"] = r["outputs"] == base_outputs[bs]
    report = {"benchmark": "speculative", "date": now_iso(), "device": device_name(),
              "commit": git_commit(), "model": args.shape or args.model_path,
              "input_len": args.input_len, "output_len": args.output_len,
              "num_draft_tokens": args.num_draft_tokens, "eagle_topk": args.eagle_topk,
              "num_steps": args.num_steps, "ngram_max_bfs_breadth": args.ngram_max_bfs_breadth,
              "overlap": isinstance(spec, OverlapSpeculativeScheduler),
              "results": rows}
    print_table(report)
    if args.output_file:
        write_json(report, args.output_file)
    return report


def print_table(report: dict) -> None:
    print(f"speculative decoding, {report['model']} on {report['device']}: input "
          f"{report['input_len']}, output {report['output_len']}, "
          f"{report['num_draft_tokens'] - 1} drafts per step (NGRAM: "
          f"{'trees' if report.get('ngram_max_bfs_breadth', 1) > 1 else 'a chain'})")
    print(f"{'bs':>4} {'plain tok/s':>12} | {'NGRAM tok/s':>12} {'x':>6} {'acc len':>8} {'same':>5} | "
          f"{'oracle tok/s':>12} {'x':>6} {'acc len':>8} {'same':>5}")
    for r in report["results"]:
        n, o = r["ngram"], r["oracle"]
        print(f"{r['batch_size']:>4} {r['plain_tok_s']:>12.1f} | {n['decode_tok_s']:>12.1f} "
              f"{n['speedup']:>6.2f} {n['accept_length']:>8.2f} {str(n['same_as_plain']):>5} | "
              f"{o['decode_tok_s']:>12.1f} {o['speedup']:>6.2f} {o['accept_length']:>8.2f} "
              f"{str(o['same_as_plain']):>5}")
    eagle = [r for r in report["results"] if "eagle" in r]
    if eagle:
        kind = (f"trees topk {report['eagle_topk']}" if report.get("eagle_topk", 1) > 1
                else "oracle drafts")
        print(f"{'bs':>4} {'EAGLE dummy head, ' + kind + ': tok/s':>40} {'x':>6} {'acc len':>8} {'same':>5}")
        for r in eagle:
            e = r["eagle"]
            print(f"{r['batch_size']:>4} {e['decode_tok_s']:>40.1f} {e['speedup']:>6.2f} "
                  f"{e['accept_length']:>8.2f} {str(e['same_as_plain']):>5}")


if __name__ == "__main__":
    main()
