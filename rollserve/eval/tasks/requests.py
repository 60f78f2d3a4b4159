"""The three kinds of server calls tasks make, all through the RolloutClient: sampled
generations, loglikelihoods of continuations (prompt logprobs of a 0-token generation),
and reward scores. Generations and loglikelihoods go one request per prompt,
settings.batch_size of them in flight, so the progress bar moves per request; the
weight_version of every response is counted in ctx.weight_versions."""

from __future__ import annotations

from concurrent.futures import as_completed
from typing import Callable, List, Optional, Sequence, Tuple

from rollserve.eval.tasks.base import EvalContext


def chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def each_request(ctx: EvalContext, items: Sequence, call: Callable, units_per_item: float = 1.0) -> list:
    """call(item) -> a group of Samples, for every item on ctx.request_pool; the groups in
    item order. Progress advances (units_per_item each, in whole units) and versions are
    counted as each request finishes; the first failure cancels the requests not started."""
    futures = {ctx.request_pool.submit(call, item): i for i, item in enumerate(items)}
    out: list = [None] * len(items)
    carried = 0.0
    try:
        for future in as_completed(futures):
            group = future.result()
            out[futures[future]] = group
            ctx.weight_versions.update(s.weight_version for s in group)
            carried += units_per_item
            whole = int(carried + 1e-9)
            if whole:
                ctx.advance(whole)
                carried -= whole
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return out


def generate_texts(ctx: EvalContext, prompts: List[str], *, max_new_tokens: int,
                   stop: Optional[List[str]] = None,
                   per_prompt: Optional[List[dict]] = None) -> List[List[str]]:
    """n sampled completions per prompt (settings.n), in prompt order. per_prompt[i]
    overrides sampling params (stop, max_new_tokens) for prompt i."""
    s = ctx.settings
    params = {"max_new_tokens": max_new_tokens, "temperature": s.sampling_temperature(),
              "top_p": s.top_p}
    if stop:
        params["stop"] = list(stop)
    if s.seed is not None:
        params["seed"] = s.seed
    requests = [(prompt, {**params, **(per_prompt[i] if per_prompt else {})})
                for i, prompt in enumerate(prompts)]

    def call(request):
        prompt, sampling = request
        if not sampling.get("stop"):
            sampling.pop("stop", None)
        return ctx.client.generate([prompt], n=s.n, sampling_params=sampling,
                                   return_logprob=False)[0]

    return [[sample.text for sample in group] for group in each_request(ctx, requests, call)]


def encode_pair(tokenizer, context: str, continuation: str) -> Tuple[List[int], List[int]]:
    """lm-evaluation-harness's split: trailing spaces of the context move to the
    continuation, the whole string is encoded once, and the continuation is whatever
    follows the context's own tokens (so merges across the boundary are scored)."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    return whole[:len(context_ids)], whole[len(context_ids):]


def prefix_token_id(tokenizer) -> int:
    """Scores the first token when there is no context (lm-eval's prefix token)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a text with")
    return token


def loglikelihoods(ctx: EvalContext, pairs: List[Tuple[List[int], List[int]]],
                   units_per_pair: float = 1.0) -> List[float]:
    """Sum of log p(continuation | context) for each (context_ids, continuation_ids).

    One /generate call per pair with max_new_tokens 0 and logprob_start_len =
    len(context): the prompt logprobs from there on score input_ids[len(context):],
    one entry per token, i.e. the continuation."""
    for context, continuation in pairs:
        if not context or not continuation:
            raise ValueError("loglikelihood needs a non-empty context and continuation")

    def call(pair):
        context, continuation = pair
        return ctx.client.generate(input_ids=[context + continuation], n=1,
                                   sampling_params={"max_new_tokens": 0, "temperature": 0},
                                   return_logprob=True, logprob_start_len=len(context))[0]

    groups = each_request(ctx, pairs, call, units_per_item=units_per_pair)
    return [_continuation_logprob(group[0], len(continuation))
            for (_, continuation), group in zip(pairs, groups)]


def _continuation_logprob(sample, length: int) -> float:
    entries = sample.input_token_logprobs
    if entries is None or len(entries) < length:
        raise RuntimeError(f"the server returned {0 if entries is None else len(entries)} "
                           f"prompt logprobs, fewer than the {length} continuation tokens")
    values = entries[len(entries) - length:]
    if any(v is None for v in values):
        raise RuntimeError("the server left a continuation token without a logprob")
    return float(sum(values))


def reward_scores(ctx: EvalContext, conversations: List[List[dict]], label: int = 0) -> List[float]:
    """One reward per conversation from /classify (the score of output label `label`)."""
    client = ctx.reward_client or ctx.client
    rewards: List[float] = []
    for part in chunks(conversations, ctx.settings.batch_size):
        for scores in client.classify(conversations=list(part)):
            if label >= len(scores):
                raise ValueError(f"reward label {label} is out of range: the model has "
                                 f"{len(scores)} output labels")
            rewards.append(float(scores[label]))
    return rewards
