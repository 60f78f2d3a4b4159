"""What rollserve does with each of SGLang's server flags (frontend/sglang_flags.py).

Every flag SGLang documents is in FLAG_TABLE, in exactly one of three groups:

* implemented() -- a ServerArgs field (or, for --config, the parser itself) with the
  behaviour SGLang documents;
* noop(why)     -- accepted with any value and logged once at info level: the flag has
  nothing to act on here (hardware, models or features rollserve does not have, a knob of
  a feature that is off, or something rollserve always does);
* refused(reason, instead) -- the value SGLang uses by default (or the ones in `accept`)
  is accepted as a no-op, since it asks for what rollserve does anyway (`--tp 1`); any
  other value stops the start with one line naming the flag, the reason and what to use.

When a feature lands, its flag moves with one line: `"tp_size": implemented(),` plus the
ServerArgs field (tests/frontend/test_flag_table.py checks both sides agree).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from rollserve.frontend.flag_policy import (IMPLEMENTED, NOOP, REFUSED, FlagPolicy, implemented,
                                            judge_value, noop, refused)
from rollserve.frontend.sglang_flags import BY_DEST

__all__ = ["FLAG_TABLE", "CLI_ONLY", "IMPLEMENTED", "NOOP", "REFUSED", "FlagPolicy", "judge",
           "policy"]

from rollserve.frontend.flag_shared import (DEPRECATED_MOE, DISAGG, HICACHE, LORA, METRICS_EXTRA,
                                            MOE, MULTI_GPU, OFFLOAD, QUANT, SHARED, SPEC, TRACE,
                                            feature_off)


_EACH: Dict[str, FlagPolicy] = {
    # Model and tokenizer
    "model_path": implemented(),
    "tokenizer_path": implemented(),
    "tokenizer_mode": refused("the tokenizer is loaded with transformers' AutoTokenizer (the fast "
                              "one where the model ships it)", "--tokenizer-mode auto"),
    "tokenizer_worker_num": refused("one tokenizer runs in the HTTP process",
                                    "more servers behind RolloutClient for more throughput"),
    "skip_tokenizer_init": noop("the tokenizer is always loaded; requests with input_ids work "
                                "and results carry output_ids (and the decoded text as well)"),
    "load_format": implemented(),
    "model_loader_extra_config": refused("model loader options are not implemented",
                                         "--load-format auto|safetensors|pt|dummy"),
    "trust_remote_code": implemented(),
    "context_length": implemented(),
    "is_embedding": implemented(),
    "disable_mla": implemented(),
    "revision": refused("--model-path is a local folder; nothing is downloaded",
                        "check the revision out into a folder and pass it as --model-path"),
    "model_impl": refused("rollserve runs its own model implementations (Llama, Mistral, Qwen2, "
                          "Qwen3, BERT, sequence classifiers)", "--model-impl auto",
                          accept=("auto", "sglang")),
    # HTTP server
    "host": implemented(),
    "port": implemented(),
    "fastapi_root_path": refused("serving under a path prefix is not implemented",
                                 "let the reverse proxy strip the prefix"),
    "grpc_mode": refused("only the HTTP server is implemented", "the HTTP API"),
    "skip_server_warmup": noop("no warm-up request runs at start; /health answers 200 once the "
                               "model is loaded"),
    "warmups": refused("custom warm-up functions are not implemented",
                       "send warm-up requests once /health answers 200"),
    "nccl_port": noop("no NCCL group is created at start (a weight-sync group gets its address "
                      "from /init_weights_update_group)"),
    "checkpoint_engine_wait_weights_before_ready": refused(
        "checkpoint-engine start-up is not implemented",
        "start with the weights on disk, or --load-format dummy and push weights with "
        "/update_weights_from_tensor before sending requests"),
    # Quantization and data type
    "dtype": implemented(),
    "quantization": QUANT,
    "quantization_param_path": QUANT,
    "kv_cache_dtype": refused("the KV cache is kept in the model's dtype (FP8/FP4 KV caches are "
                              "not implemented)", "--kv-cache-dtype auto (--dtype sets both)"),
    "enable_fp32_lm_head": refused("the LM head runs in the model's dtype",
                                   "--dtype float32 for float32 logits throughout"),
    "modelopt_quant": QUANT,
    "modelopt_checkpoint_restore_path": QUANT,
    "modelopt_checkpoint_save_path": QUANT,
    "modelopt_export_path": QUANT,
    "quantize_and_serve": QUANT,
    "rl_quant_profile": QUANT,
    # Memory and scheduling
    "mem_fraction_static": implemented(),
    "max_running_requests": implemented(),
    "max_queued_requests": refused("a cap on queued requests is not implemented (requests wait "
                                   "without limit)", "cap concurrency in the client "
                                   "(RolloutClient max_concurrency)"),
    "max_total_tokens": implemented(),
    "chunked_prefill_size": implemented(),
    "prefill_max_requests": refused("a cap on requests per prefill batch is not implemented",
                                    "--max-prefill-tokens or --chunked-prefill-size"),
    "max_prefill_tokens": implemented(),
    "schedule_policy": implemented(),
    "enable_priority_scheduling": refused("priority scheduling is not implemented",
                                          "--schedule-policy fcfs|lpm|dfs-weight|random"),
    "abort_on_priority_when_disabled": noop("request priorities are not read, so none is refused"),
    "schedule_conservativeness": implemented(),
    "page_size": refused("the KV pool's page size is one token (prefixes of any length are "
                         "shared exactly)", "--page-size 1"),
    "swa_full_tokens_ratio": noop("only used by sliding-window hybrid models, which rollserve "
                                  "does not serve"),
    "disable_hybrid_swa_memory": noop("only used by sliding-window hybrid models, which "
                                      "rollserve does not serve"),
    "radix_eviction_policy": refused("the radix cache evicts the least recently used leaves",
                                     "--radix-eviction-policy lru"),
    # Runtime options
    "device": implemented(),
    "tp_size": implemented(),
    "pp_size": MULTI_GPU,
    "attn_cp_size": MULTI_GPU,
    "moe_dp_size": MULTI_GPU,
    "stream_interval": implemented(),
    "incremental_streaming_output": refused(
        "streamed /generate chunks carry the cumulative text, SGLang's default",
        "take the new part of each chunk as text[len(previous_text):]"),
    "random_seed": implemented(),
    "watchdog_timeout": implemented(),
    "soft_watchdog_timeout": noop("no debug dump is written for slow steps; --watchdog-timeout "
                                  "still stops a hung server"),
    "dist_timeout": implemented(),
    "download_dir": noop("nothing is downloaded: --model-path is a local folder"),
    "model_checksum": refused("checksum verification is not implemented",
                              "verify the files before start (e.g. sha256sum)"),
    "base_gpu_id": implemented(),
    "gpu_id_step": refused("TP ranks use consecutive devices from --base-gpu-id",
                           "CUDA_VISIBLE_DEVICES to pick the devices"),
    "sleep_on_idle": noop("the scheduler already blocks on its socket when idle"),
    "custom_sigquit_handler": refused("custom SIGQUIT handlers are not implemented",
                                      "SIGINT/SIGTERM stop the server and its processes cleanly"),
    # Logging
    "log_level": implemented(),
    "log_level_http": implemented(),
    "log_requests": implemented(),
    "log_requests_level": noop("--log-requests logs each request's id, prompt length and "
                               "sampling parameters, whatever the level"),
    "log_requests_format": refused("request logs are text lines", "--log-requests-format text"),
    "log_requests_target": refused("request logs go to the server's own log (stderr)",
                                   "redirect the server's output"),
    "uvicorn_access_log_exclude_prefixes": noop("the access log (on with --log-requests) is not "
                                                "filtered by path"),
    "crash_dump_folder": refused("crash dumps of recent requests are not implemented",
                                 "--log-requests"),
    "show_time_cost": noop("no custom timing marks exist to show"),
    "enable_metrics": implemented(),
    "enable_mfu_metrics": METRICS_EXTRA,
    "enable_metrics_for_all_schedulers": noop("there is one scheduler, and it records the metrics"),
    "tokenizer_metrics_custom_labels_header": feature_off(
        "custom metric labels", "--tokenizer-metrics-allowed-custom-labels"),
    "tokenizer_metrics_allowed_custom_labels": METRICS_EXTRA,
    "bucket_time_to_first_token": METRICS_EXTRA,
    "bucket_inter_token_latency": METRICS_EXTRA,
    "bucket_e2e_request_latency": METRICS_EXTRA,
    "collect_tokens_histogram": METRICS_EXTRA,
    "gc_warning_threshold_secs": noop("garbage-collection pauses are not timed"),
    "decode_log_interval": implemented(),
    "enable_request_time_stats_logging": noop("each result's meta_info already carries its "
                                              "e2e_latency"),
    "kv_events_config": refused("KV cache event publishing (NVIDIA Dynamo) is not implemented",
                                "leave it out"),
    "enable_trace": TRACE,
    "otlp_traces_endpoint": feature_off("tracing", "--enable-trace"),
    "export_metrics_to_file": METRICS_EXTRA,
    "export_metrics_to_file_dir": feature_off("exporting metrics to files",
                                       "--export-metrics-to-file"),
    # API related
    "api_key": implemented(),
    "admin_api_key": refused("a separate admin key is not implemented",
                             "--api-key, which guards every endpoint but /health"),
    "served_model_name": implemented(),
    "weight_version": implemented(),
    "chat_template": implemented(),
    "hf_chat_template_name": implemented(),
    "completion_template": refused("completion (fill-in-the-middle) templates are not implemented",
                                   "send the formatted prompt to /v1/completions"),
    "file_storage_path": noop("the OpenAI files API is not served, so nothing is stored"),
    "enable_cache_report": noop("usage.prompt_tokens_details.cached_tokens is always reported"),
    "reasoning_parser": implemented(),
    "tool_call_parser": implemented(),
    "tool_server": refused("tool servers are not implemented", "call tools from the client"),
    "sampling_defaults": refused(
        "sampling defaults are not read from generation_config.json: unset parameters take "
        "SGLang/OpenAI's defaults (temperature 1, top_p 1, top_k -1)",
        "--sampling-defaults openai, or send the parameters with each request",
        accept=("openai",), reports="openai"),
    # Data parallelism
    "dp_size": implemented(),
    "load_balance_method": implemented(),
    # Multi-node distributed serving
    "dist_init_addr": implemented(),
    "nnodes": implemented(),
    "node_rank": implemented(),
    # Model override args
    "json_model_override_args": refused("config overrides are not implemented",
                                        "edit config.json in a copy of the model folder",
                                        accept=("{}", "")),
    "preferred_sampling_params": refused("server-wide preferred sampling parameters are not "
                                         "implemented", "send the parameters with each request"),
    # LoRA
    "enable_lora": LORA,
    "lora_paths": LORA,
    # Kernel backends
    "attention_backend": implemented(),
    "prefill_attention_backend": refused("one attention backend serves prefill and decode",
                                         "--attention-backend"),
    "decode_attention_backend": refused("one attention backend serves prefill and decode",
                                        "--attention-backend"),
    "sampling_backend": refused("sampling runs in rollserve's own torch/Triton kernels",
                                "leave it out (or --sampling-backend pytorch)",
                                accept=(None, "pytorch"), reports="pytorch"),
    "grammar_backend": implemented(),
    "constrained_json_disable_any_whitespace": implemented(),
    "disable_jump_forward": implemented(),
    "disable_flashinfer_autotune": noop("flashinfer (with --attention-backend flashinfer) runs "
                                        "attention only, with no autotuned kernels"),
    # Speculative decoding
    "speculative_algorithm": implemented(),
    "speculative_num_steps": implemented(),
    "speculative_num_draft_tokens": implemented(),
    "speculative_ngram_max_trie_depth": implemented(),
    "speculative_ngram_min_bfs_breadth": implemented(),
    "speculative_ngram_max_bfs_breadth": implemented(),
    "speculative_ngram_match_type": implemented(),
    "speculative_ngram_min_match_window_size": implemented(),
    "speculative_ngram_max_match_window_size": implemented(),
    "speculative_draft_model_path": implemented(),
    "speculative_eagle_topk": implemented(),
    "speculative_accept_threshold_single": refused(
        "a relaxed acceptance threshold changes the output distribution; verification is exact",
        "leave it out (1.0)"),
    "speculative_accept_threshold_acc": refused(
        "a relaxed acceptance threshold changes the output distribution; verification is exact",
        "leave it out (1.0)"),
    "enable_multi_layer_eagle": SPEC,
    # MoE
    "ep_size": implemented(),
    "moe_a2a_backend": implemented(),
    "elastic_ep_backend": MOE,
    "enable_deepep_waterfill": MOE,
    "elastic_ep_rejoin": MOE,
    # Mamba cache
    # Hierarchical cache
    "enable_hierarchical_cache": HICACHE,
    "hicache_storage_backend": HICACHE,
    "hierarchical_sparse_attention_extra_config": refused(
        "hierarchical sparse attention is not implemented", "leave it out"),
    "enable_lmcache": HICACHE,
    # KTransformers
    "kt_weight_path": refused("KTransformers CPU/GPU expert offload is not implemented",
                              "a dense model that fits the device"),
    # Diffusion LLM
    "dllm_algorithm": refused("diffusion LLMs are not implemented", "an autoregressive model"),
    "dllm_algorithm_config": feature_off("diffusion LLMs", "--dllm-algorithm"),
    # Offloading
    "cpu_offload_gb": OFFLOAD,
    "offload_group_size": OFFLOAD,
    "multi_item_scoring_delimiter": refused("multi-item scoring is not implemented",
                                            "score each item with its own request"),
    # Optimization and debug options
    "disable_radix_cache": implemented(),
    "cuda_graph_max_bs": implemented(),
    "cuda_graph_bs": implemented(),
    "disable_cuda_graph": implemented(),
    "disable_cuda_graph_padding": refused("decode batches are always padded to the next "
                                          "captured CUDA-graph size", "--disable-cuda-graph to "
                                          "run without graphs"),
    "enable_profile_cuda_graph": refused("profiling graph capture is not implemented",
                                         "/start_profile and /stop_profile"),
    "enable_cudagraph_gc": noop("garbage collection is not frozen during graph capture"),
    "enable_layerwise_nvtx_marker": refused("NVTX markers are not implemented",
                                            "/start_profile and /stop_profile (torch.profiler)"),
    "enable_tokenizer_batch_encode": noop("a batch's prompts are tokenized one by one in the "
                                          "HTTP process either way"),
    "disable_tokenizer_batch_decode": noop("the detokenizer decodes each request incrementally "
                                           "either way"),
    "disable_overlap_schedule": implemented(),
    "enable_mixed_chunk": refused("mixing prefill chunks and decode in one batch is not "
                                  "implemented (each step runs decode, then prefill chunks)",
                                  "--chunked-prefill-size to bound a prefill step"),
    "enable_dp_attention": implemented(),
    "enable_two_batch_overlap": refused("two-batch overlap is not implemented",
                                        "leave it out (the overlap scheduler is on by default)"),
    "enable_single_batch_overlap": refused("single-batch overlap is not implemented",
                                           "leave it out (the overlap scheduler is on by "
                                           "default)"),
    "tbo_token_distribution_threshold": feature_off("two-batch overlap",
                                             "--enable-two-batch-overlap"),
    "enable_torch_compile": implemented(),
    "enable_torch_compile_debug_mode": noop("torch.compile runs with its own defaults"),
    "disable_piecewise_cuda_graph": noop("prefill runs without CUDA graphs already (decode graphs "
                                         "are controlled by --disable-cuda-graph)"),
    "enforce_piecewise_cuda_graph": refused("piecewise CUDA graphs for prefill are not "
                                            "implemented", "decode CUDA graphs "
                                            "(--cuda-graph-max-bs)"),
    "torch_compile_max_bs": implemented(),
    "torchao_config": QUANT,
    "enable_nan_detection": refused("NaN detection in the sampler is not implemented",
                                    "leave it out"),
    "triton_attention_reduce_in_fp32": noop("the Triton attention kernels always accumulate in "
                                            "float32"),
    "triton_attention_num_kv_splits": refused("the Triton decode kernel picks its KV split per "
                                              "batch", "leave it out"),
    "triton_attention_split_tile_size": refused("the Triton decode kernel picks its KV split per "
                                                "batch", "leave it out"),
    "num_continuous_decode_steps": refused("one decode step runs per scheduler step",
                                           "--num-continuous-decode-steps 1"),
    "delete_ckpt_after_loading": refused("deleting the checkpoint after loading is not "
                                         "implemented", "delete it yourself after /health "
                                         "answers 200"),
    "enable_memory_saver": implemented(),
    "enable_weights_cpu_backup": refused("release_memory_occupation keeps no host copy of the "
                                         "weights", "push weights after resume_memory_occupation "
                                         "(/update_weights_from_tensor or _from_disk)"),
    "allow_auto_truncate": implemented(),
    "enable_custom_logit_processor": refused("custom logit processors are not implemented",
                                             "logit_bias in the sampling parameters"),
    "enable_return_hidden_states": refused("returning hidden states is not implemented",
                                           "an embedding model (--is-embedding) for pooled states"),
    "enable_return_routed_experts": implemented(),
    "limit_mm_data_per_request": implemented(),
    "mm_enable_dp_encoder": implemented(),
    "scheduler_recv_interval": noop("the scheduler reads every new request before each step, "
                                    "which costs nothing measurable here"),
    "numa_node": refused("NUMA binding is not implemented", "numactl --cpunodebind=N rollserve "
                         "serve ..."),
    "enable_deterministic_inference": implemented(),
    "rl_on_policy_target": refused("matching a trainer's numerics (true on-policy) is not "
                                   "implemented", "compare logprobs in the trainer"),
    "enable_fused_qk_norm_rope": noop("q/k norm and rotary already run in one Triton kernel on CUDA"),
    # Dynamic batch tokenizer
    "enable_dynamic_batch_tokenizer": noop("prompts are tokenized as they arrive in the HTTP "
                                           "process; batching them is not needed at this scale"),
    # Debug tensor dumps
    "debug_tensor_dump_output_folder": refused("tensor dumps are not implemented",
                                               "/start_profile, or the model in Python via "
                                               "rollserve.Engine"),
    "debug_tensor_dump_layers": feature_off("tensor dumps", "--debug-tensor-dump-output-folder"),
    "debug_tensor_dump_input_file": refused("tensor dumps are not implemented", "leave it out"),
    "debug_tensor_dump_inject": refused("tensor injection is not implemented", "leave it out"),
    # PD disaggregation
    "disaggregation_mode": DISAGG,
    # Encode prefill disaggregation
    "encoder_only": DISAGG,
    "language_only": DISAGG,
    "encoder_urls": DISAGG,
    # Custom weight loader
    "custom_weight_loader": refused("custom weight loader functions are not implemented",
                                    "/update_weights_from_disk or /update_weights_from_tensor"),
    "weight_loader_disable_mmap": noop("safetensors files are read with safetensors' own loader"),
    "weight_loader_prefetch_checkpoints": noop("one process reads the checkpoint once; there is "
                                               "nothing to share between ranks"),
    "weight_loader_prefetch_num_threads": noop("checkpoint prefetching is not used"),
    "remote_instance_weight_loader_seed_instance_ip": refused(
        "loading weights from another running instance is not implemented",
        "/update_weights_from_distributed from the trainer, or the checkpoint on disk"),
    "remote_instance_weight_loader_start_seed_via_transfer_engine": refused(
        "serving as a seed for remote-instance loading is not implemented", "leave it out"),
    # PD multiplexing
    "enable_pdmux": refused("PD multiplexing is not implemented", "leave it out"),
    # Configuration file (read by the parser; not a ServerArgs field in SGLang either)
    "config": implemented(),
    # Multi-modal
    # Checkpoint decryption
    "decrypted_config_file": refused("encrypted checkpoints are not implemented",
                                     "decrypt the checkpoint into a folder first"),
    # Forward hooks and msProbe
    "forward_hooks": refused("forward hooks are not implemented",
                             "rollserve.Engine in Python, or /start_profile"),
    "msprobe_dump_config": refused("msProbe dumps (Ascend NPU) are not implemented",
                                   "leave it out"),
    # Deprecated in SGLang
    "enable_ep_moe": implemented(),
    "enable_deepep_moe": implemented(),
    "prefill_round_robin_balance": noop("deprecated in SGLang; one replica per server here"),
    "enable_flashinfer_cutlass_moe": DEPRECATED_MOE,
    "enable_flashinfer_cutedsl_moe": DEPRECATED_MOE,
    "enable_flashinfer_trtllm_moe": DEPRECATED_MOE,
    "enable_triton_kernel_moe": DEPRECATED_MOE,
    "enable_flashinfer_mxfp4_moe": DEPRECATED_MOE,
    "crash_on_nan": refused("crashing on NaN logprobs is not implemented", "leave it out"),
    "hybrid_kvcache_ratio": noop("only used by hybrid (local/global attention) models, which "
                                 "rollserve does not serve"),
    "load_watch_interval": noop("deprecated in SGLang; there is no load watcher (one replica)"),
    # Legacy flags of older SGLang releases
    "disable_flashinfer": noop("flashinfer is used only with --attention-backend flashinfer "
                               "(the default on CUDA is triton)"),
    "disable_flashinfer_sampling": noop("sampling never uses flashinfer here"),
    "enable_overlap_schedule": noop("the overlap scheduler is on by default "
                                    "(--disable-overlap-schedule turns it off)"),
    "prefill_only_one_req": refused("prefilling one request at a time is not implemented",
                                    "--max-prefill-tokens or --chunked-prefill-size"),
    "enable_double_sparsity": refused("double sparsity attention is not implemented",
                                      "leave it out"),
}

def _build() -> Dict[str, FlagPolicy]:
    table = dict(_EACH)
    for kind, dests in SHARED.items():
        for dest in dests:
            assert dest not in table, f"{dest} is in the flag table twice"
            table[dest] = kind
    return table


FLAG_TABLE: Dict[str, FlagPolicy] = _build()

# Parsed by the command line only; no ServerArgs field carries it (as in SGLang).
CLI_ONLY = frozenset({"config"})


def policy(dest: str) -> FlagPolicy:
    return FLAG_TABLE[dest]


def judge(dest: str, value: Any) -> Tuple[bool, str]:
    """(accepted, one-line message) for SGLang flag `dest` given with `value`, when rollserve
    does not implement it: a no-op, or refused unless the value is an accepted one."""
    return judge_value(BY_DEST[dest], FLAG_TABLE[dest], value)
