"""OpenAI's chat and completions requests translated into the engine's
GenerateReqInput, and the engine's results translated back (whole or streamed).

A `Plan` holds one translated request: `obj` goes to TokenizerManager.generate(),
`response(out)` shapes its final result, `events(results)` its stream.
"""

from __future__ import annotations

import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Optional

from rollserve.api.protocol import (ApiError, AssistantMessage, ChatChoice,
                                    ChatCompletionChunk, ChatCompletionRequest,
                                    ChatCompletionResponse, ChatStreamChoice, CompletionChoice,
                                    CompletionLogprobs, CompletionRequest, CompletionResponse,
                                    DeltaMessage, ModelCard, ModelList, SamplingFields,
                                    error_body)
from rollserve.api.chat_tools import (ChatOutputShaper, check_tools, output_format,
                                      template_message)
from rollserve.api.openai_results import (as_list, chat_logprobs, completion_logprobs,
                                          extend_logprobs, finish_reason, matched_stop,
                                          response_metadata, usage_of)
from rollserve.api.sse import DONE, sse_event
from rollserve.api.prompt_logprobs import (check_prompt_logprobs, logprob_fields,
                                           prompt_logprobs_of, trim_tops)
from rollserve.api.structured_output import structured_output_params
from rollserve.core.chat_templates import resolve_chat_template, with_template_stop
from rollserve.frontend.encode_manager import wrong_model_error
from rollserve.frontend.request_input import GenerateReqInput
from rollserve.core.sampling_params import GRAMMAR_FIELDS, InvalidRequest
from rollserve.frontend.tokenizer_manager import EngineDeadError
from rollserve.api.chat_images import message_text
from rollserve.frontend.truncation import truncate_prompt

MAX_N = 128
MAX_TOP_LOGPROBS = 20
CHAT_ROLES = {"system", "developer", "user", "assistant", "tool"}
# engine field -> the OpenAI field a client set
PARAM_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens",
               "sampling_seed": "seed"}


@dataclass
class ChoiceProgress:
    """How much of one streamed choice was sent already."""

    text_len: int = 0
    logprobs_sent: int = 0
    text_offset: int = 0
    started: bool = False
    meta: Optional[Dict[str, Any]] = None


class Plan:
    obj: GenerateReqInput
    field_names: Dict[str, str] = {}

    def response(self, out) -> dict:
        raise NotImplementedError

    def events(self, results: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        raise NotImplementedError

    def param_name(self, engine_field: str) -> str:
        name = engine_field.removeprefix("sampling_params.")
        return self.field_names.get(name, PARAM_NAMES.get(name, name))


async def stream_with_errors(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Once the stream has started an error can only be reported as an event."""
    async with aclosing(events):
        try:
            async for chunk in events:
                yield chunk
        except InvalidRequest as e:
            yield sse_event(error_body(400, e.message, e.field))
            yield DONE
        except Exception as e:  # e.g. the engine died mid-stream: say so, then end the stream
            status = 503 if isinstance(e, EngineDeadError) else 500
            yield sse_event(error_body(status, f"{type(e).__name__}: {e}", kind="server_error"))
            yield DONE


# ---- native /generate ----------------------------------------------------------------------
@dataclass
class NativePlan(Plan):
    obj: GenerateReqInput

    def response(self, out) -> Any:
        return out

    def param_name(self, engine_field: str) -> str:
        return engine_field  # native clients sent the engine's own field names

    async def events(self, results: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        async with aclosing(results):
            async for out in results:
                yield sse_event(out)
        yield DONE


# ---- shared by chat and completions -----------------------------------------------------------
class OpenAIServing:
    def __init__(self, tokenizer_manager, model_name: str):
        self.tm = tokenizer_manager
        self.tokenizer = tokenizer_manager.tokenizer
        self.model_name = model_name
        self.accepted_names = {model_name, tokenizer_manager.model_path, "default"}
        template = tokenizer_manager.args.chat_template
        # a --chat-template's stop strings end chat answers too (SGLang's stop_str)
        self.template_stop = resolve_chat_template(template).stop if template else ()

    def models(self) -> dict:
        return ModelList(data=[self._card()]).model_dump()

    def model(self, name: str) -> dict:
        """GET /v1/models/{name}: the served model's card (under any name requests accept)."""
        self.check_model(name)
        return self._card().model_dump()

    def _card(self) -> ModelCard:
        return ModelCard(id=self.model_name, root=self.tm.model_path,
                         max_model_len=self.tm.context_len)

    def check_generation(self) -> None:
        """Chat and completions need a generation model; an embedding or reward model says
        which endpoints it serves instead (400)."""
        if not self.tm.is_generation:
            raise wrong_model_error(self.tm.pooling, "generation", self.tm.model_path)

    def check_model(self, name: str) -> None:
        if name not in self.accepted_names:
            raise ApiError(404, f"The model `{name}` does not exist; this server serves "
                                f"`{self.model_name}`", "model", kind="model_not_found")

    def _check_prompt_len(self, ids: List[int], param: str,
                          requested: Optional[int] = None) -> List[int]:
        limit = self.tm.max_req_input_len
        if len(ids) <= limit:
            return ids
        if self.tm.args.allow_auto_truncate:  # leaves room for the requested tokens
            return truncate_prompt(ids, requested, limit)
        raise ApiError(400, f"The prompt has {len(ids)} tokens, over this model's maximum input "
                            f"length of {limit} tokens (context length {self.tm.context_len})", param)

    def _max_tokens(self, requested: Optional[int], prompt_len: int, param: str) -> int:
        room = min(self.tm.context_len, self.tm.max_total_num_tokens) - prompt_len
        if requested is None:
            return max(room, 1)
        if requested < 0:
            raise ApiError(400, f"{param} must be >= 0, got {requested}", param)
        if prompt_len + requested > self.tm.context_len:
            if self.tm.args.allow_auto_truncate:  # SGLang clips max_new_tokens then
                return max(room, 1)
            raise ApiError(400, (
                f"This model's maximum context length is {self.tm.context_len} tokens. However, "
                f"you requested {prompt_len + requested} tokens ({prompt_len} in the prompt, "
                f"{requested} for the completion)"), param)
        return requested

    @staticmethod
    def _check_common(req: SamplingFields) -> None:
        if not 1 <= req.n <= MAX_N:
            raise ApiError(400, f"n must be in [1, {MAX_N}], got {req.n}", "n")
        check_prompt_logprobs(req.prompt_logprobs, req.stream)  # api/prompt_logprobs.py

    def _sampling_params(self, req: SamplingFields, max_tokens: int) -> dict:
        return {
            # response_format, regex, ebnf, structured_outputs -> json_schema / regex / ebnf
            **structured_output_params(req, self.tm.args.grammar_backend),
            "max_new_tokens": max_tokens, "min_new_tokens": req.min_tokens,
            # vLLM's clients (TRL) send top_k 0 for "no top_k"; SGLang's spelling is -1
            "temperature": req.temperature, "top_p": req.top_p,
            "top_k": -1 if req.top_k == 0 else req.top_k,
            "min_p": req.min_p, "presence_penalty": req.presence_penalty,
            "frequency_penalty": req.frequency_penalty,
            "repetition_penalty": req.repetition_penalty, "stop": req.stop,
            "stop_token_ids": req.stop_token_ids, "ignore_eos": req.ignore_eos,
            "skip_special_tokens": req.skip_special_tokens, "no_stop_trim": req.no_stop_trim,
            "n": req.n, "seed": req.seed, "logit_bias": req.logit_bias,
            "logprob_mode": req.logprob_mode,
        }

    # ---- chat ----------------------------------------------------------------------------
    def plan_chat(self, req: ChatCompletionRequest) -> "ChatPlan":
        self.check_model(req.model)
        self.check_generation()
        self._check_common(req)
        if req.prompt_logprobs is not None:
            raise ApiError(400, "prompt_logprobs is served on /v1/completions only", "prompt_logprobs")
        if req.max_completion_tokens is not None:
            requested, param = req.max_completion_tokens, "max_completion_tokens"
        else:
            requested, param = req.max_tokens, "max_tokens"
        tools = check_tools(req)
        fmt, schema = output_format(req, tools, self.tm.args)
        top = req.top_logprobs or 0
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", "top_logprobs")
        if top and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs to be true", "top_logprobs")
        images: List[str] = []  # image_url parts, in order (render_chat fills it)
        ids = self._check_prompt_len(self.render_chat(req, tools.template_tools(), images),
                                     "messages", requested)
        max_tokens = self._max_tokens(requested, len(ids), param)
        rid = req.rid or uuid.uuid4().hex
        params = self._sampling_params(req, max_tokens)
        params["stop"] = with_template_stop(req.stop, self.template_stop)
        if schema is not None:  # tool_choice required / named: calls as a JSON array
            if any(k in params for k in GRAMMAR_FIELDS):  # response_format / regex / ebnf
                raise ApiError(400, "tool_choice required or naming a function already "
                                    "constrains the output; leave out response_format", "tool_choice")
            params["json_schema"] = schema
        if fmt and fmt.tool_parser and "skip_special_tokens" not in req.model_fields_set:
            params["skip_special_tokens"] = False  # call markers are special tokens in most models
        obj = GenerateReqInput(input_ids=ids, sampling_params=params,
                               rid=rid, return_logprob=req.logprobs, top_logprobs_num=top,
                               return_text_in_logprobs=True, stream=req.stream,
                               image_data=images or None)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return ChatPlan(obj=obj, id=f"chatcmpl-{rid}", model=req.model, n=req.n,
                        include_usage=include_usage,
                        field_names={"input_ids": "messages", "image_data": "messages",
                                     "max_new_tokens": param,
                                     **({"json_schema": "tools"} if schema else {})},
                        token_ids=req.return_token_ids,
                        ids_as_tokens=req.return_tokens_as_token_ids,
                        output=ChatOutputShaper(fmt) if fmt else None)

    def render_chat(self, req: ChatCompletionRequest, tools: Optional[List[dict]] = None,
                    images: Optional[List[str]] = None) -> List[int]:
        """The prompt's ids; image_url parts become the model's image placeholder in the text
        and their URLs are appended to `images` (chat_images.py)."""
        if not req.messages:
            raise ApiError(400, "messages must hold at least one message", "messages")
        messages = []
        for i, message in enumerate(req.messages):
            if message.role not in CHAT_ROLES:
                raise ApiError(400, f"messages[{i}].role {message.role!r} is not one of "
                                    f"{sorted(CHAT_ROLES)}", f"messages[{i}].role")
            role = "system" if message.role == "developer" else message.role
            text = message_text(message.content, i, images, self.tm.images)
            messages.append(template_message(message, i, role, text))
        try:  # chat_template_kwargs: template variables (enable_thinking, ...)
            prompt = self.tokenizer.apply_chat_template(
                messages, **(req.chat_template_kwargs or {}), tools=tools, tokenize=False,
                add_generation_prompt=True)
        except Exception as e:  # no template, or one that rejects this conversation
            raise ApiError(400, f"cannot apply the chat template: {e}; pass --chat-template "
                                "if the model has none", "messages") from e
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    # ---- completions -------------------------------------------------------------------------
    def plan_completion(self, req: CompletionRequest) -> "CompletionPlan":
        self.check_model(req.model)
        self.check_generation()
        self._check_common(req)
        if req.suffix:
            raise ApiError(400, "suffix is not supported", "suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise ApiError(400, "best_of other than n is not supported", "best_of")
        top = req.logprobs
        if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]", "logprobs")
        prompts = self._prompt_ids(req.prompt, req.max_tokens)
        max_tokens = min(self._max_tokens(req.max_tokens, len(ids), "max_tokens") for ids in prompts)
        rid = req.rid or uuid.uuid4().hex
        single = len(prompts) == 1
        wants_logprobs = top is not None
        obj = GenerateReqInput(
            input_ids=prompts[0] if single else prompts,
            sampling_params=self._sampling_params(req, max_tokens),
            rid=rid if single else [f"{rid}-{i}" for i in range(len(prompts))],
            **logprob_fields(top, req.prompt_logprobs, req.echo, MAX_TOP_LOGPROBS),
            return_text_in_logprobs=True, stream=req.stream)
        echo_texts = self._echo_texts(req.prompt, prompts) if req.echo else None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return CompletionPlan(obj=obj, id=f"cmpl-{rid}", model=req.model, n=req.n,
                              include_usage=include_usage, echo_texts=echo_texts,
                              top_logprobs=top, field_names={"input_ids": "prompt"},
                              token_ids=req.return_token_ids,
                              ids_as_tokens=req.return_tokens_as_token_ids, prompts=prompts,
                              prompt_logprobs=req.prompt_logprobs)

    def _prompt_ids(self, prompt, requested: Optional[int] = None) -> List[List[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        if not prompt:
            raise ApiError(400, "prompt is empty", "prompt")
        out = []
        vocab = len(self.tokenizer)
        for p in prompt:
            ids = self.tokenizer.encode(p) if isinstance(p, str) else list(p)
            if not ids:
                raise ApiError(400, "prompt is empty", "prompt")
            if any(t < 0 or t >= vocab for t in ids):
                raise ApiError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
            out.append(self._check_prompt_len(ids, "prompt", requested))
        return out

    def _echo_texts(self, prompt, ids: List[List[int]]) -> List[str]:
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            return list(prompt)
        return [self.tokenizer.decode(p) for p in ids]


# ---- chat results -----------------------------------------------------------------------------
@dataclass
class ChatPlan(Plan):
    obj: GenerateReqInput
    id: str
    model: str
    n: int
    include_usage: bool
    field_names: Dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    token_ids: bool = False
    ids_as_tokens: bool = False
    output: Optional[ChatOutputShaper] = None  # tool calls / reasoning (api/chat_tools.py)

    def response(self, out) -> dict:
        items = sorted(as_list(out), key=lambda r: r.get("index", 0))
        choices = []
        for i, item in enumerate(items):
            meta = item["meta_info"]
            logprobs = None
            if self.obj.return_logprob:
                logprobs = chat_logprobs(meta.get("output_token_logprobs", []),
                                         meta.get("output_top_logprobs"), self.ids_as_tokens)
            message, reason = AssistantMessage(content=item["text"]), finish_reason(meta)
            if self.output is not None:
                message, reason = self.output.message(item["text"], reason)
            choices.append(ChatChoice(index=i, message=message,
                                      logprobs=logprobs, finish_reason=reason,
                                      matched_stop=matched_stop(meta),
                                      token_ids=item["output_ids"] if self.token_ids else None,
                                      weight_version_spans=meta.get("weight_version_spans")))
        return ChatCompletionResponse(id=self.id, created=self.created, model=self.model,
                                      choices=choices,
                                      usage=usage_of([r["meta_info"] for r in items], self.n),
                                      prompt_token_ids=list(self.obj.input_ids)
                                      if self.token_ids else None,
                                      metadata=response_metadata(items)).model_dump()

    def _chunk(self, index: int, delta: DeltaMessage, logprobs=None, reason=None,
               spans=None) -> bytes:
        choice = ChatStreamChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=reason,
                                  weight_version_spans=spans)
        return sse_event(ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                             choices=[choice]).model_dump())

    async def events(self, results: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        progress: Dict[int, ChoiceProgress] = {}
        async with aclosing(results):
            async for out in results:
                for item in as_list(out):
                    for event in self._item_events(item, progress):
                        yield event
        if self.include_usage:
            metas = [progress[i].meta for i in sorted(progress)]
            chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                        choices=[], usage=usage_of(metas, self.n))
            yield sse_event(chunk.model_dump())
        yield DONE

    def _item_events(self, item: dict, progress: Dict[int, ChoiceProgress]) -> List[bytes]:
        index = item.get("index", 0)
        state = progress.setdefault(index, ChoiceProgress())
        meta = state.meta = item["meta_info"]
        events = []
        if not state.started:
            state.started = True
            events.append(self._chunk(index, DeltaMessage(role="assistant", content="")))
        delta = item["text"][state.text_len:]
        state.text_len = len(item["text"])
        logprobs = None
        if self.obj.return_logprob:
            entries = meta.get("output_token_logprobs", [])
            tops = meta.get("output_top_logprobs")
            logprobs = chat_logprobs(entries[state.logprobs_sent:],
                                     tops[state.logprobs_sent:] if tops else None,
                                     self.ids_as_tokens)
            state.logprobs_sent = len(entries)
        reason = finish_reason(meta)
        deltas = [DeltaMessage(content=delta)] if delta else []
        if self.output is not None:
            deltas, reason = self.output.deltas(index, delta, reason)
        if not deltas and (reason or (logprobs and logprobs.content)):
            deltas = [DeltaMessage(content="")]
        for d in deltas[:-1]:
            events.append(self._chunk(index, d))
        if deltas:  # the last delta carries the step's logprobs and the finish reason
            events.append(self._chunk(index, deltas[-1], logprobs, reason,
                                      meta.get("weight_version_spans")))
        return events


# ---- completion results -------------------------------------------------------------------------
@dataclass
class CompletionPlan(Plan):
    obj: GenerateReqInput
    id: str
    model: str
    n: int
    include_usage: bool
    echo_texts: Optional[List[str]]
    top_logprobs: Optional[int]
    field_names: Dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    token_ids: bool = False
    ids_as_tokens: bool = False
    prompts: Optional[List[List[int]]] = None
    prompt_logprobs: Optional[int] = None  # vLLM's, per choice (api/prompt_logprobs.py)

    def _echo(self, index: int) -> str:
        return self.echo_texts[index // self.n] if self.echo_texts else ""

    def _logprobs(self, meta: dict, echo: Optional[str], start: int, offset: int) -> CompletionLogprobs:
        """Logprobs of the output tokens from `start` on, preceded by the prompt's when
        `echo` is its text; text offsets counted from `offset`."""
        tops_out = meta.get("output_top_logprobs") if self.top_logprobs else None
        out = meta.get("output_token_logprobs", [])[start:]
        prompt = CompletionLogprobs()
        if echo is not None:
            tops_in = meta.get("input_top_logprobs") if self.top_logprobs else None
            prompt = completion_logprobs(meta.get("input_token_logprobs", []), tops_in, offset,
                                         self.ids_as_tokens)
            offset += len(echo)
        return extend_logprobs(prompt, completion_logprobs(out, tops_out[start:] if tops_out else None,
                                                   offset, self.ids_as_tokens))

    def response(self, out) -> dict:
        items = sorted(as_list(out), key=lambda r: r.get("index", 0))
        choices = []
        for i, item in enumerate(items):
            meta, echo = item["meta_info"], self._echo(i)
            logprobs = prompt_lps = None
            if self.prompt_logprobs is not None:
                prompt_lps = prompt_logprobs_of(meta, self.prompts[i // self.n], self.prompt_logprobs)
                trim_tops(meta, self.top_logprobs)
            if self.top_logprobs is not None:
                logprobs = self._logprobs(meta, echo if self.echo_texts else None, 0, 0)
            ids = self.token_ids
            choices.append(CompletionChoice(index=i, text=echo + item["text"], logprobs=logprobs,
                                            finish_reason=finish_reason(meta),
                                            matched_stop=matched_stop(meta),
                                            token_ids=item["output_ids"] if ids else None,
                                            prompt_token_ids=self.prompts[i // self.n]
                                            if ids else None, prompt_logprobs=prompt_lps,
                                            weight_version_spans=meta.get("weight_version_spans")))
        return CompletionResponse(id=self.id, created=self.created, model=self.model,
                                  choices=choices,
                                  usage=usage_of([r["meta_info"] for r in items], self.n),
                                  metadata=response_metadata(items)).model_dump()

    async def events(self, results: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        progress: Dict[int, ChoiceProgress] = {}
        async with aclosing(results):
            async for out in results:
                for item in as_list(out):
                    event = self._item_event(item, progress)
                    if event:
                        yield event
        if self.include_usage:
            metas = [progress[i].meta for i in sorted(progress)]
            yield sse_event(CompletionResponse(id=self.id, created=self.created, model=self.model,
                                               choices=[], usage=usage_of(metas, self.n)
                                               ).model_dump())
        yield DONE

    def _item_event(self, item: dict, progress: Dict[int, ChoiceProgress]) -> Optional[bytes]:
        index = item.get("index", 0)
        state = progress.setdefault(index, ChoiceProgress())
        meta = state.meta = item["meta_info"]
        text = item["text"][state.text_len:]
        state.text_len = len(item["text"])
        echo = None
        if not state.started:
            state.started = True
            echo = self._echo(index) if self.echo_texts else None
            text = (echo or "") + text
        logprobs = None
        if self.obj.return_logprob:
            logprobs = self._logprobs(meta, echo, state.logprobs_sent, state.text_offset)
            state.logprobs_sent = len(meta.get("output_token_logprobs", []))
            if logprobs.text_offset:
                state.text_offset = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
        reason = finish_reason(meta)
        if not (text or reason or (logprobs and logprobs.tokens)):
            return None
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=reason,
                                  matched_stop=matched_stop(meta),
                                  weight_version_spans=meta.get("weight_version_spans"))
        return sse_event(CompletionResponse(id=self.id, created=self.created, model=self.model,
                                            choices=[choice]).model_dump())
