"""Every server flag and its default, in one place.

The CLI (`rollserve serve`), `rollserve.Engine(**kwargs)` and /get_server_info
all read `ServerArgs`. Flag names follow SGLang's so that users can port their
launch commands unchanged.

ServerArgs is frozen: start-up resolves it once (`dataclasses.replace`, e.g. the default
model path or a pooling model's overrides) and hands each process layer the part it
uses (`scheduler_config()`, which holds the executor's), frozen too.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import List, Optional

from rollserve.executor.attention.registry import ATTENTION_BACKENDS
from rollserve.executor.config import ExecutorConfig
from rollserve.scheduler.config import SCHEDULE_POLICIES, SchedulerConfig
DTYPES = ("auto", "float32", "bfloat16", "float16", "half", "float")
LOAD_FORMATS = ("auto", "safetensors", "pt", "dummy")


@dataclass(frozen=True)
class ServerArgs:
    # model
    model_path: Optional[str] = None
    tokenizer_path: Optional[str] = None
    served_model_name: Optional[str] = None
    chat_template: Optional[str] = None
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
    # gpu path
    attention_backend: Optional[str] = None  # default: triton on CUDA, torch_native on CPU
    cuda_graph_max_bs: Optional[int] = None  # decode graphs up to this batch size (default 512)
    cuda_graph_bs: Optional[List[int]] = None  # explicit capture sizes (overrides the max)
    disable_cuda_graph: bool = False
    disable_mla: bool = False  # DeepSeek MLA models: expanded per-head K/V, no latent cache
    disable_overlap_schedule: bool = False
    enable_torch_compile: bool = False
    torch_compile_max_bs: int = 32
    # observability and robustness
    log_level: str = "info"
    log_requests: bool = False
    decode_log_interval: int = 40
    enable_metrics: bool = False
    watchdog_timeout: float = 300.0
    # the version label of the weights loaded at start (SGLang's --weight-version); after
    # start-up the scheduler owns the current one
    weight_version: str = "default"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"{name}: {msg}")

        need(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        need(self.load_format in LOAD_FORMATS, "load_format",
             f"must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        need(self.schedule_policy in SCHEDULE_POLICIES, "schedule_policy",
             f"must be one of {SCHEDULE_POLICIES}, got {self.schedule_policy!r}")
        need(self.attention_backend is None or self.attention_backend in ATTENTION_BACKENDS,
             "attention_backend", f"must be one of {ATTENTION_BACKENDS}")
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
        need(0 < self.port < 65536, "port", "must be in 1..65535")

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
            disable_cuda_graph=self.disable_cuda_graph, enable_torch_compile=self.enable_torch_compile,
            torch_compile_max_bs=self.torch_compile_max_bs, disable_mla=self.disable_mla)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            executor=self.executor_config(), tokenizer_path=self.tokenizer_path or self.model_path,
            max_prefill_tokens=self.max_prefill_tokens, chunked_prefill_size=self.chunked_prefill_size,
            schedule_policy=self.schedule_policy,
            schedule_conservativeness=self.schedule_conservativeness,
            disable_radix_cache=self.disable_radix_cache, random_seed=self.random_seed,
            stream_interval=self.stream_interval, disable_overlap_schedule=self.disable_overlap_schedule,
            decode_log_interval=self.decode_log_interval, watchdog_timeout=self.watchdog_timeout,
            log_level=self.log_level, weight_version=self.weight_version)

    def public_dict(self) -> dict:
        """to_dict() with secrets hidden, for /get_server_info and Engine.get_server_info."""
        out = self.to_dict()
        if out.get("api_key"):
            out["api_key"] = "<hidden>"
        return out

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ServerArgs":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown server argument(s): {', '.join(unknown)}; "
                f"rollserve does not implement them"
            )
        return cls(**kwargs)


_HELP = {
    "attention_backend": "triton (default on CUDA) | torch_native (default on CPU) | flashinfer",
    "disable_mla": "DeepSeek-V2/V3: attend over expanded per-head K/V instead of the latent cache",
    "cuda_graph_max_bs": "capture decode CUDA graphs for batch sizes up to this (default 512)",
    "cuda_graph_bs": "the decode batch sizes to capture, e.g. --cuda-graph-bs 1 2 4 8 16",
    "disable_overlap_schedule": "run each step's CPU work after its GPU work instead of beside it",
    "enable_torch_compile": "torch.compile the decode forward for batch sizes <= --torch-compile-max-bs",
    "model_path": "HF-format model folder; default: the embedded SmolLM2-135M-Instruct",
    "tokenizer_path": "tokenizer folder; default: the model folder",
    "served_model_name": "name shown by /v1/models; default: the model path",
    "chat_template": "a built-in template name or a path to a jinja file",
    "dtype": "auto picks the config's dtype on CUDA and float32 on CPU",
    "load_format": "auto/safetensors/pt read the checkpoint; dummy makes random weights",
    "mem_fraction_static": "share of device memory for weights + KV pool",
    "max_total_tokens": "size of the KV pool in tokens (overrides mem_fraction_static)",
    "chunked_prefill_size": "max new tokens of one request per prefill step (-1 disables)",
    "schedule_policy": "fcfs | lpm | dfs-weight | random",
    "decode_log_interval": "log the running batch and generation throughput every this many "
                           "decode steps (0: never)",
    "watchdog_timeout": "seconds a forward step may take before the server is declared dead",
    "enable_memory_saver": "CUDA: allocate weights and KV pool through torch_memory_saver, so "
                           "release/resume_memory_occupation keep their addresses",
}

# Flags SGLang users may pass that rollserve does not implement (yet): refuse, never ignore.
UNSUPPORTED_FLAGS = {
    "--tp-size": "tensor parallelism is not implemented yet",
    "--tensor-parallel-size": "tensor parallelism is not implemented yet",
    "--dp-size": "run several servers behind a router for data parallelism",
    "--data-parallel-size": "run several servers behind a router for data parallelism",
    "--quantization": "quantization is not implemented",
    "--kv-cache-dtype": "only the model dtype is supported for the KV cache",
    "--speculative-algorithm": "speculative decoding is not implemented",
    "--lora-paths": "LoRA is not implemented",
}


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Add one --flag-name per ServerArgs field (bools become store_true)."""
    for f in dataclasses.fields(ServerArgs):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"dest": f.name, "default": f.default, "help": _HELP.get(f.name)}
        if f.type in ("bool",):
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if f.type == "Optional[List[int]]":
            parser.add_argument(flag, type=int, nargs="+", **kwargs)
            continue
        kind = {"int": int, "float": float, "Optional[int]": int,
                "Optional[float]": float}.get(f.type, str)
        parser.add_argument(flag, type=kind, **kwargs)
    for flag, why in UNSUPPORTED_FLAGS.items():
        parser.add_argument(flag, nargs="?", const=True, default=None,
                            dest="_unsupported_" + flag.strip("-").replace("-", "_"),
                            help=f"refused: {why}")


def server_args_from_cli(namespace: argparse.Namespace) -> ServerArgs:
    refused = [
        (flag, why) for flag, why in UNSUPPORTED_FLAGS.items()
        if getattr(namespace, "_unsupported_" + flag.strip("-").replace("-", "_"), None) is not None
    ]
    if refused:
        raise SystemExit("\n".join(f"error: {flag} is not supported: {why}" for flag, why in refused))
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(ServerArgs)
              if hasattr(namespace, f.name)}
    try:
        return ServerArgs(**values)
    except ValueError as e:
        raise SystemExit(f"error: --{str(e).split(':')[0].replace('_', '-')}: {str(e).split(':', 1)[1].strip()}")

