"""Every server flag and its default, in one place.

The CLI (`rollserve serve`), `rollserve.Engine(**kwargs)` and /get_server_info all read
`ServerArgs`. Its fields are the SGLang flags rollserve implements, under SGLang's names;
every other SGLang flag is known too (frontend/sglang_flags.py) and is accepted as a
no-op or refused with a reason, as frontend/flag_table.py says.

ServerArgs is frozen: start-up resolves it once (`dataclasses.replace`, e.g. the default
model path or a pooling model's overrides) and hands each process layer the part it
uses (`scheduler_config()`, which holds the executor's), frozen too.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from rollserve.executor.attention.registry import ATTENTION_BACKENDS
from rollserve.executor.config import ExecutorConfig
from rollserve.frontend import flag_table
from rollserve.frontend.server_help import HELP  # one --help line per field (flag_docs, tests)
from rollserve.frontend.reasoning_parser import REASONING_PARSERS
from rollserve.frontend.sglang_flags import BY_DEST
from rollserve.frontend.tool_parsers import TOOL_CALL_PARSERS
from rollserve.frontend.speculative_args import ALGORITHMS as SPECULATIVE_ALGORITHMS
from rollserve.frontend.speculative_args import NGRAM_MATCH_TYPES, check_speculative
from rollserve.frontend.speculative_args import draft_spec, scheduler_fields as speculative_fields
from rollserve.scheduler.config import SCHEDULE_POLICIES, SchedulerConfig

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16", "half", "float")
LOAD_FORMATS = ("auto", "safetensors", "pt", "dummy", "sharded_state")
LOAD_BALANCE_METHODS = ("auto", "round_robin", "shortest_queue", "cache_aware")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_HOST_PORT = re.compile(r"^\[?[\w.:-]+\]?:\d{1,5}$")


@dataclass(frozen=True)
class ServerArgs:
    # model
    model_path: Optional[str] = None
    tokenizer_path: Optional[str] = None
    served_model_name: Optional[str] = None
    chat_template: Optional[str] = None
    hf_chat_template_name: Optional[str] = None
    # chat answers: tool calls and reasoning parsed out (frontend/tool_parsers, reasoning_parser)
    tool_call_parser: Optional[str] = None
    reasoning_parser: Optional[str] = None
    dtype: str = "auto"
    context_length: Optional[int] = None
    load_format: str = "auto"
    trust_remote_code: bool = False
    is_embedding: bool = False
    # http
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: Optional[str] = None
    max_request_body_bytes: int = 32 * 1024 * 1024
    # memory and scheduling
    device: Optional[str] = None
    mem_fraction_static: Optional[float] = None
    max_total_tokens: Optional[int] = None
    max_running_requests: Optional[int] = None
    max_prefill_tokens: int = 16384
    chunked_prefill_size: Optional[int] = None
    schedule_policy: str = "fcfs"
    schedule_conservativeness: float = 1.0
    disable_radix_cache: bool = False
    allow_auto_truncate: bool = False
    random_seed: Optional[int] = None
    stream_interval: int = 1
    enable_memory_saver: bool = False
    # update_weights_from_tensor: read SGLang's pickled payloads (verl, slime) when they come
    # from 127.0.0.1; unpickling is code execution, so only for a trainer on this host you trust
    trust_local_pickled_tensors: bool = False
    # SGLang's custom logit processor, as the operator's code: "module:attribute", called with
    # (logits, [sampling_params.custom_params]) for requests that pass custom_params
    custom_logit_processor: Optional[str] = None
    # constrained decoding (json_schema / regex / ebnf): xgrammar, or none to refuse them
    grammar_backend: str = "xgrammar"
    constrained_json_disable_any_whitespace: bool = False
    disable_jump_forward: bool = False  # SGLang's: grammar-forced tokens are appended unsampled
    # gpu path
    attention_backend: Optional[str] = None  # default: triton on CUDA, torch_native on CPU
    cuda_graph_max_bs: Optional[int] = None  # decode graphs up to this batch size (default 512)
    cuda_graph_bs: Optional[List[int]] = None  # explicit capture sizes (overrides the max)
    disable_cuda_graph: bool = False
    disable_mla: bool = False  # DeepSeek MLA models: expanded per-head K/V, no latent cache
    enable_return_routed_experts: bool = False  # MoE: requests may ask for their routed experts
    limit_mm_data_per_request: Optional[str] = None  # VLMs: JSON, e.g. {"image": 4}
    mm_enable_dp_encoder: bool = False  # VLMs under TP: each rank encodes a share of the images
    # batch-invariant kernels, per-request sampling seeds (kernels/batch_invariant.py)
    enable_deterministic_inference: bool = False
    disable_overlap_schedule: bool = False
    enable_torch_compile: bool = False
    torch_compile_max_bs: int = 32
    # parallelism (docs/parallel.md): TP ranks per replica, replicas, nodes
    tp_size: int = 1
    ep_size: int = 1  # MoE experts split whole over the TP ranks (1 or tp_size)
    enable_ep_moe: bool = False  # SGLang's deprecated spelling of --ep-size = --tp-size
    # deepep: DP attention's MoE tokens go to their experts' ranks and back by all-to-all
    # (torch.distributed, layers/moe_dispatch.py); none: all-gather + all-reduce
    moe_a2a_backend: str = "none"
    enable_deepep_moe: bool = False  # SGLang's deprecated spelling of --moe-a2a-backend deepep
    dp_size: int = 1
    # attention data-parallel inside one replica of tp_size ranks (dp_size == tp_size), the
    # MoE experts split over the same ranks (docs/parallel.md)
    enable_dp_attention: bool = False
    load_balance_method: str = "auto"  # --dp-size's router policy; auto: cache_aware
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: Optional[str] = None
    base_gpu_id: int = 0
    # observability and robustness
    log_level: str = "info"
    log_level_http: Optional[str] = None  # uvicorn's own log; None: warning
    log_requests: bool = False
    decode_log_interval: int = 40
    enable_metrics: bool = False
    watchdog_timeout: float = 300.0
    # seconds a weight-update group may take to form (init_weights_update_group), and each of
    # its broadcasts; None: 300 (SGLang's flag: torch.distributed's init timeout). The TP
    # group's collectives wait as long (None: torch's default)
    dist_timeout: Optional[int] = None
    # SIGTERM: seconds in-flight requests get to finish before each is answered with an error
    shutdown_grace_period: float = 10.0
    # the version label of the weights loaded at start (SGLang's --weight-version); after
    # start-up the scheduler owns the current one
    weight_version: str = "default"
    # speculative decoding (frontend/speculative_args.py): NGRAM, EAGLE, EAGLE3 or NEXTN
    # drafts, a chain per request (a tree with --speculative-eagle-topk > 1; NGRAM's with
    # --speculative-ngram-max-bfs-breadth > 1, SGLang's default)
    speculative_algorithm: Optional[str] = None
    speculative_draft_model_path: Optional[str] = None
    speculative_num_steps: Optional[int] = None
    speculative_eagle_topk: Optional[int] = None
    speculative_num_draft_tokens: Optional[int] = None
    speculative_ngram_max_trie_depth: int = 18
    speculative_ngram_min_bfs_breadth: int = 1
    speculative_ngram_max_bfs_breadth: int = 10
    speculative_ngram_match_type: str = "BFS"
    # older SGLang releases' match window (None: every length up to the trie depth - 1)
    speculative_ngram_min_match_window_size: int = 1
    speculative_ngram_max_match_window_size: Optional[int] = None

    def __post_init__(self):
        if self.enable_deepep_moe:
            object.__setattr__(self, "moe_a2a_backend", "deepep")
        # SGLang's old spelling of --ep-size N, and its deepep backend, set ep_size to tp_size
        if (self.enable_ep_moe or self.moe_a2a_backend == "deepep") and self.ep_size == 1:
            object.__setattr__(self, "ep_size", self.tp_size)
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"{name}: {msg}")

        for name, choices in CHOICES.items():
            value = getattr(self, name)
            need(value is None or value in choices, name,
                 f"must be one of {', '.join(choices)}; got {value!r}")
        need(self.device is None or bool(_DEVICE.match(self.device)), "device",
             f"must be cuda, cuda:N or cpu; got {self.device!r}")
        need(self.mem_fraction_static is None or 0 < self.mem_fraction_static < 1,
             "mem_fraction_static", "must be in (0, 1)")
        for name in ("max_total_tokens", "max_running_requests", "context_length",
                     "chunked_prefill_size"):
            value = getattr(self, name)
            need(value is None or value > 0 or (name == "chunked_prefill_size" and value == -1),
                 name, f"must be positive, got {value}")
        need(self.max_prefill_tokens > 0, "max_prefill_tokens", "must be positive")
        need(self.cuda_graph_max_bs is None or self.cuda_graph_max_bs > 0, "cuda_graph_max_bs",
             "must be positive")
        need(self.cuda_graph_bs is None or (len(self.cuda_graph_bs) > 0 and all(
            isinstance(n, int) and n > 0 for n in self.cuda_graph_bs)), "cuda_graph_bs",
             "must be a non-empty list of positive batch sizes")
        need(self.torch_compile_max_bs > 0, "torch_compile_max_bs", "must be positive")
        need(self.schedule_conservativeness > 0, "schedule_conservativeness", "must be positive")
        need(self.stream_interval >= 1, "stream_interval", "must be >= 1")
        need(self.decode_log_interval >= 0, "decode_log_interval", "must be >= 0")
        need(self.watchdog_timeout > 0, "watchdog_timeout", "must be positive")
        need(self.dist_timeout is None or self.dist_timeout > 0, "dist_timeout", "must be positive")
        need(self.shutdown_grace_period >= 0, "shutdown_grace_period", "must be >= 0")
        need(self.max_request_body_bytes > 0, "max_request_body_bytes", "must be positive")
        need(0 < self.port < 65536, "port", "must be in 1..65535")
        for name in ("tp_size", "ep_size", "dp_size", "nnodes"):
            need(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        need(self.ep_size in (1, self.tp_size), "ep_size",
             f"must be 1 or equal to tp_size ({self.tp_size}): the experts are split whole over "
             f"the tensor-parallel ranks (SGLang's mixed layout, ep_size < tp_size, is not "
             f"implemented), got {self.ep_size}")
        need(0 <= self.node_rank < self.nnodes, "node_rank",
             f"must be in 0..nnodes-1 ({self.nnodes - 1}), got {self.node_rank}")
        need(self.tp_size % self.nnodes == 0, "nnodes",
             f"must divide tp_size ({self.tp_size}): each node runs tp_size / nnodes ranks")
        need(self.nnodes == 1 or self.dist_init_addr is not None, "dist_init_addr",
             "is required with --nnodes > 1 (host:port of node 0, reachable from every node)")
        need(self.dist_init_addr is None or _HOST_PORT.match(self.dist_init_addr) is not None,
             "dist_init_addr", f"must be host:port, got {self.dist_init_addr!r}")
        need(self.nnodes == 1 or self.dp_size == 1, "dp_size",
             "multi-node serving runs one replica; start a router over the replicas instead")
        need(self.base_gpu_id >= 0, "base_gpu_id", "must be >= 0")
        if self.enable_dp_attention:
            need(self.tp_size > 1 and self.dp_size == self.tp_size, "enable_dp_attention",
                 f"needs --dp-size equal to --tp-size (> 1): each of the tp_size ranks runs "
                 f"attention alone over its own requests; got tp_size {self.tp_size}, dp_size "
                 f"{self.dp_size}")
            need(self.nnodes == 1, "enable_dp_attention", "runs on one node here")
            need(self.load_format != "sharded_state", "enable_dp_attention",
                 "reads the HF checkpoint (sharded_state files are cut for TP attention)")
        need(self.moe_a2a_backend == "none" or (self.enable_dp_attention and self.ep_size == self.tp_size),
             "moe_a2a_backend", "deepep (the all-to-all token dispatch, over torch.distributed) "
             "needs --enable-dp-attention: each rank dispatches its own requests' tokens")
        check_speculative(self)

    def check_machine(self) -> None:
        """What can only be checked on this machine, before any process starts: folders
        exist, the device is there, the attention backend can run, the chat template
        resolves. Raises ValueError("<field>: ...") naming the flag to change."""
        from rollserve.core.chat_templates import resolve_chat_template
        from rollserve.executor.attention.registry import select_attention_backend

        for name in ("model_path", "tokenizer_path"):
            path = getattr(self, name)
            if path and not os.path.isdir(path):
                raise ValueError(f"{name}: {path!r} is not a folder (rollserve loads a local "
                                 "Hugging Face folder; download it first, e.g. with "
                                 "`huggingface-cli download REPO --local-dir DIR`)")
        device = self.resolved_device()
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"device: {device} is not available here (torch "
                                 f"{torch.__version__}, CUDA {torch.version.cuda or 'not built'}"
                                 "); use --device cpu or leave --device out")
        select_attention_backend(self.attention_backend, device,
                                 deterministic=self.enable_deterministic_inference)
        if self.chat_template:
            resolve_chat_template(self.chat_template)

    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def executor_config(self) -> ExecutorConfig:
        assert self.model_path, "resolve the model path before start-up"
        return ExecutorConfig(
            model_path=self.model_path, device=self.resolved_device(), dtype=self.dtype,
            load_format=self.load_format, trust_remote_code=self.trust_remote_code,
            is_embedding=self.is_embedding, context_length=self.context_length,
            mem_fraction_static=self.mem_fraction_static, max_total_tokens=self.max_total_tokens,
            max_running_requests=self.max_running_requests,
            enable_memory_saver=self.enable_memory_saver, attention_backend=self.attention_backend,
            cuda_graph_max_bs=self.cuda_graph_max_bs,
            cuda_graph_bs=tuple(self.cuda_graph_bs) if self.cuda_graph_bs else None,
            # DP attention's MoE exchange has per-step sizes: eager (not captured yet)
            disable_cuda_graph=self.disable_cuda_graph or self.enable_dp_attention,
            enable_torch_compile=self.enable_torch_compile,
            torch_compile_max_bs=self.torch_compile_max_bs, disable_mla=self.disable_mla,
            tp_size=self.tp_size, nnodes=self.nnodes, base_gpu_id=self.base_gpu_id,
            ep_size=self.ep_size, dp_attention=self.enable_dp_attention,
            moe_a2a=self.moe_a2a_backend == "deepep",
            mm_enable_dp_encoder=self.mm_enable_dp_encoder,
            dist_init_addr=self.dist_init_addr, dist_timeout=self.dist_timeout,
            enable_return_routed_experts=self.enable_return_routed_experts,
            enable_deterministic_inference=self.enable_deterministic_inference,
            draft=draft_spec(self))

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            executor=self.executor_config(), tokenizer_path=self.tokenizer_path or self.model_path,
            max_prefill_tokens=self.max_prefill_tokens, chunked_prefill_size=self.chunked_prefill_size,
            schedule_policy=self.schedule_policy,
            schedule_conservativeness=self.schedule_conservativeness,
            disable_radix_cache=self.disable_radix_cache, random_seed=self.random_seed,
            stream_interval=self.stream_interval,
            disable_overlap_schedule=self.disable_overlap_schedule,
            decode_log_interval=self.decode_log_interval, watchdog_timeout=self.watchdog_timeout,
            dist_timeout=self.dist_timeout,
            log_level=self.log_level, weight_version=self.weight_version,
            custom_logit_processor=self.custom_logit_processor,
            grammar_backend=self.grammar_backend,
            json_any_whitespace=not self.constrained_json_disable_any_whitespace,
            disable_jump_forward=self.disable_jump_forward,
            **speculative_fields(self))

    def public_dict(self) -> dict:
        """to_dict() with secrets hidden, for /get_server_info and Engine.get_server_info."""
        out = self.to_dict()
        if out.get("api_key"):
            out["api_key"] = "<hidden>"
        return out

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ServerArgs":
        """ServerArgs from keyword arguments, as rollserve.Engine(**kwargs) (and
        sglang.Engine) take them: SGLang's other flags follow frontend/flag_table.py."""
        known = {f.name for f in dataclasses.fields(cls)}
        ours = {k: v for k, v in kwargs.items() if k in known}
        theirs = {k: v for k, v in kwargs.items() if k not in known and k in BY_DEST}
        unknown = sorted(set(kwargs) - set(ours) - set(theirs))
        if unknown:
            raise TypeError(f"unknown server argument(s): {', '.join(unknown)}; neither rollserve "
                            "nor SGLang has them")
        from rollserve.frontend.sglang_env import check_sglang_environment

        notes, refusals = judge_sglang_values(theirs)
        env_notes, env_refusals = check_sglang_environment(os.environ)
        if refusals or env_refusals:
            raise ValueError("; ".join(refusals + env_refusals))
        for note in notes + env_notes:
            logger.info(note)
        return cls(**ours)


CHOICES: Dict[str, Tuple[str, ...]] = {
    "dtype": DTYPES, "load_format": LOAD_FORMATS, "schedule_policy": SCHEDULE_POLICIES,
    "attention_backend": ATTENTION_BACKENDS, "log_level": LOG_LEVELS, "log_level_http": LOG_LEVELS,
    "grammar_backend": ("xgrammar", "none"),
    "tool_call_parser": tuple(TOOL_CALL_PARSERS), "reasoning_parser": tuple(REASONING_PARSERS),
    "load_balance_method": LOAD_BALANCE_METHODS, "speculative_algorithm": SPECULATIVE_ALGORITHMS,
    # SGLang's mooncake, mori, nixl and ascend_fuseep need their own transfer libraries
    "moe_a2a_backend": ("none", "deepep"),
    "speculative_ngram_match_type": NGRAM_MATCH_TYPES,
}



# ---- the command line ----------------------------------------------------------------------------
_SGLANG_ATTR = "sglang__"  # namespace attribute prefix of the flags that are not ServerArgs fields


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Every ServerArgs field as SGLang spells its flag(s), then every other SGLang flag in
    a group of its own (no effect, or refused unless at its default), then --config."""
    parser.usage = ("%(prog)s [--model-path PATH] [--host HOST] [--port PORT] [--config YAML] "
                    "[FLAG ...]  (all flags below)")
    ours = parser.add_argument_group("rollserve options (SGLang's flags that rollserve implements)")
    for f in dataclasses.fields(ServerArgs):
        names = list(BY_DEST[f.name].names) if f.name in BY_DEST else ["--" + f.name.replace("_", "-")]
        kwargs: Dict[str, Any] = {"dest": f.name, "default": f.default,
                                  "help": help_with_default(HELP[f.name], f.default)}
        if f.type == "bool":
            ours.add_argument(*names, action="store_true", **kwargs)
            continue
        if f.type == "Optional[List[int]]":
            kwargs.update(type=int, nargs="+", metavar="N")
        else:
            kwargs["type"] = {"int": int, "float": float, "Optional[int]": int,
                              "Optional[float]": float}.get(f.type, str)
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
            if f.name.startswith("log_level"):
                kwargs["type"] = str.lower  # SGLang takes INFO as well as info
        ours.add_argument(*names, **kwargs)
    ours.add_argument("--config", dest="config", default=None, metavar="YAML",
                      help="read flags from a YAML file (keys are flag names: model-path: ..., "
                           "tp-size: 1); flags on the command line win")
    _add_sglang_flags(parser)


def help_with_default(text: str, default: Any) -> str:
    """`text` + " (default: X)" unless it already says or the default is unset."""
    if "default" in text or default is None:
        return text
    if isinstance(default, bool):
        return f"{text} (default: {'on' if default else 'off'})"
    return f"{text} (default: {default})"


def _add_sglang_flags(parser: argparse.ArgumentParser) -> None:
    from rollserve.frontend.sglang_flags import SHORT_ALIASES, SGLANG_FLAGS

    groups = {
        flag_table.NOOP: parser.add_argument_group(
            "SGLang flags accepted with no effect here (each is logged once at start)"),
        flag_table.REFUSED: parser.add_argument_group(
            "SGLang flags refused unless at their default (the default asks for what rollserve "
            "does)"),
    }
    fields = {f.name for f in dataclasses.fields(ServerArgs)}
    for flag in SGLANG_FLAGS:
        rule = flag_table.policy(flag.dest)
        if flag.dest in fields or rule.kind == flag_table.IMPLEMENTED:
            continue
        names = list(flag.names) + [a for a, dest in SHORT_ALIASES.items() if dest == flag.dest]
        kwargs: Dict[str, Any] = {"dest": _SGLANG_ATTR + flag.dest, "default": argparse.SUPPRESS}
        if rule.kind == flag_table.NOOP:
            kwargs["help"] = f"no effect: {rule.reason}"
        elif flag.type == "bool":  # a switch can only ask for the feature
            kwargs["help"] = f"refused: {rule.reason}; instead: {rule.instead}"
        else:
            accepted = rule.accept if rule.accept is not None else (flag.default,)
            kwargs["help"] = (f"refused unless {' or '.join(map(_shown, accepted))}: {rule.reason}; "
                              f"instead: {rule.instead}")
        if flag.type == "bool":
            groups[rule.kind].add_argument(*names, action="store_true", **kwargs)
            continue
        base = flag.type.removeprefix("list[").rstrip("]")
        kwargs["type"] = {"int": int, "float": float}.get(base, str)
        kwargs["metavar"] = flag.dest.upper()
        if flag.type.startswith("list["):
            kwargs["nargs"] = "*"
        if flag.choices:  # as strict as SGLang's own parser
            kwargs["choices"] = flag.choices
            kwargs.pop("metavar")
        groups[rule.kind].add_argument(*names, **kwargs)


def _shown(value: Any) -> str:
    return "unset" if value is None else repr(value) if value == "" else str(value)


def judge_sglang_values(values: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """(notes, refusals): one line each for SGLang flags that are not ServerArgs fields."""
    notes, refusals = [], []
    for dest, value in values.items():
        accepted, message = flag_table.judge(dest, value)
        (notes if accepted else refusals).append(message)
    return notes, refusals


def server_args_from_cli(namespace: argparse.Namespace) -> ServerArgs:
    """ServerArgs from parsed flags, or SystemExit with one line per problem: refused SGLang
    flags, invalid values, and what cannot work on this machine (all before anything starts)."""
    from rollserve.core.logging_setup import configure_logging
    from rollserve.frontend.sglang_env import check_sglang_environment

    theirs = {k[len(_SGLANG_ATTR):]: v for k, v in vars(namespace).items() if k.startswith(_SGLANG_ATTR)}
    notes, refusals = judge_sglang_values(theirs)
    env_notes, env_refusals = check_sglang_environment(os.environ)
    if refusals or env_refusals:
        raise SystemExit("\n".join(f"error: {line}" for line in refusals + env_refusals))
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(ServerArgs)
              if hasattr(namespace, f.name)}
    try:
        args = ServerArgs(**values)
        args.check_machine()
    except ValueError as e:
        field, _, why = str(e).partition(":")
        raise SystemExit(f"error: --{field.strip().replace('_', '-')}: {why.strip()}")
    if not logging.getLogger().handlers:  # the server configures it again, the same way
        configure_logging(args.log_level, prefix="server")
    for note in notes + env_notes:
        logger.info(note)
    return args


def expand_config_argv(argv: List[str], insert_at: int = 0) -> List[str]:
    """argv with `--config FILE` replaced by the file's flags, placed at `insert_at` (before
    every command-line flag, so that those win, as in SGLang)."""
    import yaml

    for i, token in enumerate(argv):
        if token == "--config" or token.startswith("--config="):
            path = token.partition("=")[2] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else "")
            rest = argv[:i] + argv[i + (1 if "=" in token else 2):]
            try:
                with open(path) as f:
                    config = yaml.safe_load(f) or {}
            except (OSError, yaml.YAMLError) as e:
                raise SystemExit(f"error: --config {path}: {e}")
            if not isinstance(config, dict):
                raise SystemExit(f"error: --config {path}: expected a mapping of flag names to values")
            return rest[:insert_at] + _config_argv(config) + rest[insert_at:]
    return argv


def _config_argv(config: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    for key, value in config.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out
