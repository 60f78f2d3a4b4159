"""The three kinds of server calls tasks make, all through the RolloutClient, in chunks
of `settings.batch_size` so the progress bar moves: sampled generations, loglikelihoods
of continuations (prompt logprobs of a 0-token generation), and reward scores."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from rollserve.eval.tasks.base import EvalContext


def chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def generate_texts(ctx: EvalContext, prompts: List[str], *, max_new_tokens: int,
                   stop: Optional[List[str]] = None) -> List[List[str]]:
    """n sampled completions per prompt (settings.n), in prompt order."""
    s = ctx.settings
    params = {"max_new_tokens": max_new_tokens, "temperature": s.sampling_temperature(),
              "top_p": s.top_p}
    if stop:
        params["stop"] = list(stop)
    if s.seed is not None:
        params["seed"] = s.seed
    texts: List[List[str]] = []
    for part in chunks(prompts, s.batch_size):
        groups = ctx.client.generate(list(part), n=s.n, sampling_params=params,
                                     return_logprob=False)
        texts.extend([sample.text for sample in group] for group in groups)
        ctx.advance(len(part))
    return texts


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

    One /generate call per pair with max_new_tokens 0: the prompt logprobs from
    logprob_start_len on score input_ids[logprob_start_len:], one entry per token, so
    the last len(continuation) entries are the continuation's. A chunk shares the
    smallest context length as its start (the client takes one start per call)."""
    out: List[float] = []
    carried = 0.0
    for part in chunks(pairs, ctx.settings.batch_size):
        for context, continuation in part:
            if not context or not continuation:
                raise ValueError("loglikelihood needs a non-empty context and continuation")
        start = min(len(context) for context, _ in part)
        groups = ctx.client.generate(input_ids=[c + k for c, k in part], n=1,
                                     sampling_params={"max_new_tokens": 0, "temperature": 0},
                                     return_logprob=True, logprob_start_len=start)
        for (_, continuation), group in zip(part, groups):
            out.append(_continuation_logprob(group[0], len(continuation)))
        carried += len(part) * units_per_pair
        whole = int(carried)
        if whole:
            ctx.advance(whole)
            carried -= whole
    return out


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
