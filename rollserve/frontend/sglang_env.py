"""SGLang's environment switches (docs/references/environment_variables.md of SGLang):
none is silently ignored. At start every SGLANG_* / SGL_* variable that is set is either
honored, logged once as having no effect here, or, where it would change what the server
does and rollserve cannot do that, refused like a flag (one line: the variable, the
reason, what to use instead)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

HONORED, NOOP, REFUSED = "honored", "no-op", "refused"
_OFF = ("", "0", "false", "no", "off")  # what SGLang reads as "not set" for a boolean switch


@dataclass(frozen=True)
class EnvSwitch:
    kind: str
    reason: str
    instead: str = ""
    accept: Tuple[str, ...] = _OFF  # refused: values that ask for rollserve's behaviour


def _noop(reason: str) -> EnvSwitch:
    return EnvSwitch(NOOP, reason)


def _refused(reason: str, instead: str, accept: Tuple[str, ...] = _OFF) -> EnvSwitch:
    return EnvSwitch(REFUSED, reason, instead, accept)


_DEEPGEMM = _noop("no DeepGEMM kernels run here (bf16/fp16/fp32 GEMMs go through torch)")
_MOE = _noop("a MoE / expert-parallel setting; rollserve serves dense models only")
_MULTI_GPU = _noop("a multi-GPU communication switch; tensor parallelism uses torch.distributed's own "
                    "collectives (NCCL / gloo)")
_GRAMMAR = _noop("constrained decoding is not implemented")
_TOOLS = _noop("tool calling is not implemented")
_TIMEOUT = _refused("request queue/run timeouts are not implemented",
                    "a client-side timeout (RolloutClient timeout=...)", accept=("", "-1"))

SGLANG_ENV: Dict[str, EnvSwitch] = {
    # honored
    "SGLANG_TORCH_PROFILER_DIR": EnvSwitch(HONORED, "default output folder of /start_profile "
                                                    "(ROLLSERVE_TORCH_PROFILER_DIR wins)"),
    # general
    "SGLANG_USE_MODELSCOPE": _refused("models are not downloaded (from ModelScope or the Hub)",
                                      "download the model and pass its folder as --model-path"),
    "SGLANG_HOST_IP": _noop("the server listens on --host"),
    "SGLANG_PORT": _noop("the server listens on --port"),
    "SGLANG_LOGGING_CONFIG_PATH": _refused("logging configuration files are not read",
                                           "--log-level and --log-level-http", accept=("",)),
    "SGLANG_LOG_REQUEST_HEADERS": _noop("--log-requests logs no request headers"),
    "SGLANG_HEALTH_CHECK_TIMEOUT": EnvSwitch(HONORED, "seconds without a heartbeat from the "
                                                      "scheduler before /health and waiting "
                                                      "requests answer 503 (default 20)"),
    "SGLANG_REQ_WAITING_TIMEOUT": _TIMEOUT,
    "SGLANG_REQ_RUNNING_TIMEOUT": _TIMEOUT,
    "SGLANG_CACHE_DIR": _noop("nothing is downloaded or cached by rollserve outside ROLLSERVE_CACHE"),
    "SGLANG_FORWARD_UNKNOWN_TOOLS": _TOOLS,
    "SGLANG_TOOL_STRICT_LEVEL": _TOOLS,
    "SGLANG_WAIT_WEIGHTS_READY_TIMEOUT": _noop("the weights are loaded before the server answers"),
    # performance switches
    "SGLANG_ENABLE_TORCH_COMPILE": _refused("torch.compile is switched by a flag here",
                                            "--enable-torch-compile"),
    "SGLANG_ENABLE_TORCH_INFERENCE_MODE": _noop("forward passes always run without autograd"),
    "SGLANG_SET_CPU_AFFINITY": _noop("processes are not pinned to cores"),
    "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": _noop("a --context-length above the model's "
                                                       "max_position_embeddings is already accepted"),
    "SGLANG_IS_FLASHINFER_AVAILABLE": _noop("flashinfer is used only with --attention-backend "
                                            "flashinfer"),
    "SGLANG_SKIP_P2P_CHECK": _MULTI_GPU,
    "SGLANG_CHUNKED_PREFIX_CACHE_THRESHOLD": _noop("only used by MLA models"),
    "SGLANG_FUSED_MLA_ENABLE_ROPE_FUSION": _noop("only used by MLA models"),
    "SGLANG_DISABLE_CONSECUTIVE_PREFILL_OVERLAP": _noop("the overlap scheduler is switched with "
                                                        "--disable-overlap-schedule"),
    "SGLANG_SCHEDULER_MAX_RECV_PER_POLL": _noop("the scheduler reads every waiting request each step"),
    "SGLANG_DISABLE_FA4_WARMUP": _noop("no FlashAttention-4 kernels run here"),
    "SGLANG_USE_SGL_FA3_KERNEL": _noop("no FlashAttention-3 kernels run here"),
    "SGLANG_USE_CUSTOM_TRITON_KERNEL_CACHE": _noop("Triton uses its own kernel cache"),
    "SGLANG_MM_BUFFER_SIZE_MB": _noop("rollserve serves text-only models"),
    "SGLANG_MM_PRECOMPUTE_HASH": _noop("rollserve serves text-only models"),
    "SGLANG_CUSTOM_ALLREDUCE_ALGO": _MULTI_GPU,
    "SGLANG_SYMM_MEM_PREALLOC_GB_SIZE": _MULTI_GPU,
    "SGLANG_NCCL_ALL_GATHER_IN_OVERLAP_SCHEDULER_SYNC_BATCH": _MULTI_GPU,
    # DeepGEMM (the old SGL_ names too)
    "SGL_ENABLE_JIT_DEEPGEMM": _DEEPGEMM,
    "SGLANG_ENABLE_JIT_DEEPGEMM": _DEEPGEMM,
    "SGLANG_JIT_DEEPGEMM_PRECOMPILE": _DEEPGEMM,
    "SGLANG_JIT_DEEPGEMM_COMPILE_WORKERS": _DEEPGEMM,
    "SGLANG_IN_DEEPGEMM_PRECOMPILE_STAGE": _DEEPGEMM,
    "SGLANG_DG_CACHE_DIR": _DEEPGEMM,
    "SGL_DG_CACHE_DIR": _DEEPGEMM,
    "SGLANG_DG_USE_NVRTC": _DEEPGEMM,
    "SGLANG_USE_DEEPGEMM_BMM": _DEEPGEMM,
    "SGLANG_JIT_DEEPGEMM_FAST_WARMUP": _DEEPGEMM,
    # MoE / DeepEP / model-specific
    "SGLANG_DEEPEP_BF16_DISPATCH": _MOE,
    "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK": _MOE,
    "SGLANG_DEEPEP_LL_COMBINE_SEND_NUM_SMS": _MOE,
    "SGLANG_MOE_PADDING": _MOE,
    "SGLANG_CUTLASS_MOE": _MOE,
    "SGLANG_USE_AITER": _noop("no AMD AITER kernels run here"),
    # quantization
    "SGLANG_INT4_WEIGHT": _refused("quantized weights are not implemented",
                                   "a bf16/fp16/fp32 checkpoint"),
    "SGLANG_FORCE_FP8_MARLIN": _noop("no FP8 kernels run here"),
    "SGLANG_QUANT_ALLOW_DOWNCASTING": _noop("no quantization runs here"),
    # distributed
    "SGLANG_BLOCK_NONZERO_RANK_CHILDREN": _MULTI_GPU,
    "SGLANG_IS_FIRST_RANK_ON_NODE": _MULTI_GPU,
    "SGLANG_ONE_VISIBLE_DEVICE_PER_PROCESS": _MULTI_GPU,
    "SGLANG_PP_LAYER_PARTITION": _MULTI_GPU,
    # memory, testing, profiling, storage
    "SGLANG_DEBUG_MEMORY_POOL": _noop("the KV pool has no debug mode"),
    "SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION": _noop("admission is tuned with "
                                                   "--schedule-conservativeness"),
    "SGLANG_DETOKENIZER_MAX_STATES": _noop("the detokenizer keeps one state per running request"),
    "SGLANG_IS_IN_CI": _noop("a switch of SGLang's own CI"),
    "SGLANG_IS_IN_CI_AMD": _noop("a switch of SGLang's own CI"),
    "SGLANG_TEST_RETRACT": _noop("a test switch of SGLang's scheduler"),
    "SGLANG_RECORD_STEP_TIME": _noop("use /start_profile for step timings"),
    "SGLANG_TEST_REQUEST_TIME_STATS": _noop("a test switch of SGLang's"),
    "SGLANG_PROFILE_WITH_STACK": _noop("pass with_stack in the /start_profile body"),
    "SGLANG_PROFILE_RECORD_SHAPES": _noop("pass record_shapes in the /start_profile body"),
    "SGLANG_DISABLE_OUTLINES_DISK_CACHE": _GRAMMAR,
}

_PREFIXES = ("SGLANG_", "SGL_")


def check_sglang_environment(environ: Mapping[str, str]) -> Tuple[List[str], List[str]]:
    """(notes, refusals), one line each, for the SGLang variables set in `environ`."""
    notes, refusals = [], []
    for name in sorted(environ):
        if not name.startswith(_PREFIXES):
            continue
        value = environ[name]
        switch: Optional[EnvSwitch] = SGLANG_ENV.get(name)
        if switch is None:
            notes.append(f"{name}={value}: not an environment switch rollserve knows; ignored")
        elif switch.kind == HONORED:
            continue
        elif switch.kind == NOOP:
            notes.append(f"{name}={value}: no effect in rollserve: {switch.reason}")
        elif value.strip().lower() in switch.accept:
            continue  # asks for what rollserve does anyway
        else:
            refusals.append(f"{name}={value}: {switch.reason}; instead: {switch.instead}")
    return notes, refusals
