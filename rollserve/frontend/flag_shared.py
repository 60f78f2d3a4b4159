"""The reasons many of SGLang's flags share in frontend/flag_table.py (a flag of a feature
rollserve does not have, a knob of a feature that is off), and SHARED: which flags take
each of them. Kept apart from the per-flag table so that the table stays readable.
"""

from __future__ import annotations

from typing import Dict, Tuple

from rollserve.frontend.flag_policy import FlagPolicy, noop, refused

# ---- shared reasons ------------------------------------------------------------------------------
def feature_off(feature: str, switch: str) -> FlagPolicy:
    """A knob of a feature whose switch is refused: it has nothing to act on."""
    return noop(f"{feature} is off ({switch} is refused)")


_ONE_SERVER_PER_GPU = ("--tp-size N to split a model over N GPUs, --dp-size N (or one server "
                       "per replica behind `rollserve router`) for replicas")
MULTI_GPU = refused("this kind of parallelism is not implemented (tensor and data parallelism "
                    "are)", _ONE_SERVER_PER_GPU)
QUANT = refused("quantized weights and activations are not implemented",
                "a bf16/fp16/fp32 checkpoint (--dtype picks the compute dtype)")
LORA = refused("LoRA adapters are not implemented",
               "merge the adapter into the base weights (peft merge_and_unload) and serve that "
               "folder, or push merged weights with /update_weights_from_tensor")
SPEC = refused("multi-layer EAGLE (several MTP layers drafting in turn) is not implemented",
               "--speculative-algorithm EAGLE, EAGLE3 or NEXTN, which draft with one layer")
MOE = refused("elastic expert parallelism (experts moving between ranks, DeepEP's waterfill) "
              "is not implemented: --ep-size splits the experts whole over the TP ranks, and "
              "--moe-a2a-backend deepep sends tokens to them by all-to-all",
              "leave it at its default")
HICACHE = refused("the hierarchical (host memory / storage) KV cache is not implemented",
                  "--max-total-tokens or --mem-fraction-static to size the device KV pool")
DISAGG = refused("prefill/decode (and encoder) disaggregation is not implemented",
                 "one server that does prefill and decode")
OFFLOAD = refused("offloading weights to host memory is not implemented",
                  "a model that fits device memory, or --device cpu")
METRICS_EXTRA = refused("this metrics option is not implemented",
                        "--enable-metrics (Prometheus text at /metrics) with its default buckets")
TRACE = refused("OpenTelemetry tracing is not implemented", "--enable-metrics and --log-requests")
GRAMMAR_OFF = noop("a grammar setting rollserve's xgrammar backend does not expose: a JSON "
                   "whitespace pattern is outlines' (--constrained-json-disable-any-whitespace "
                   "is served), compiled grammars are cached in memory, not on disk")
MOE_KNOB = noop("a MoE expert-parallel / kernel-backend setting with nothing to act on: "
                "experts run through rollserve's fused MoE kernel, split over the TP ranks by "
                "--ep-size and combined with one all-reduce, or with --moe-a2a-backend deepep "
                "dispatched by torch.distributed all-to-all (not the DeepEP library; no expert "
                "rebalancing)")
TP_KNOB = noop("a multi-GPU communication setting; tensor parallelism uses torch.distributed's "
               "own collectives (NCCL / gloo)")
PP_KNOB = noop("only used with pipeline parallelism, which is off (one device per server)")
LORA_KNOB = noop("a LoRA setting; LoRA is off (--enable-lora / --lora-paths are refused)")
SPEC_KNOB = noop("a setting of draft models or of SGLang's shared n-gram trie: a draft loads "
                 "from safetensors in the target's dtype and attention backend, and rollserve's "
                 "NGRAM drafts from each request's own context")
MM_KNOB = noop("a multimodal setting with nothing to act on: images are preprocessed by the "
               "model's transformers image processor and encoded in the prefill batch, features "
               "cached by image hash")
MAMBA_KNOB = noop("a Mamba / hybrid-model setting; rollserve serves no Mamba layers")
HICACHE_KNOB = noop("a hierarchical-cache setting; that cache is off "
                    "(--enable-hierarchical-cache is refused)")
DSA_KNOB = noop("only used by DeepSeek sparse attention (DSA / NSA, DeepSeek-V3.2) models, which "
                "rollserve does not serve")
KT_KNOB = noop("a KTransformers setting; it is off (--kt-weight-path is refused)")
DISAGG_KNOB = noop("a disaggregation setting; disaggregation is off (--disaggregation-mode is refused)")
FP_GEMM_KNOB = noop("only used by FP8/FP4 GEMMs; rollserve runs no quantized GEMMs")
DEPRECATED_MOE = refused("deprecated in SGLang, and it picks a MoE kernel backend rollserve "
                         "does not have (its own fused Triton MoE kernel always runs; --ep-size "
                         "and --enable-ep-moe split the experts)", "leave it out")
PRIORITY_KNOB = feature_off("priority scheduling", "--enable-priority-scheduling")
DP_ATTN_KNOB = noop("a DP-attention tuning knob (prefill delayer, DP LM head) that rollserve's DP "
                    "attention does not have: every rank steps in lockstep, the LM head is replicated")
OFFLOAD_KNOB = feature_off("layer offloading", "--offload-group-size")
PDMUX_KNOB = feature_off("PD multiplexing", "--enable-pdmux")
DOUBLE_SPARSITY_KNOB = feature_off("double sparsity", "--enable-double-sparsity")
PIECEWISE_KNOB = noop("piecewise CUDA graphs are not used")
REMOTE_LOADER_KNOB = feature_off("remote-instance loading", "--remote-instance-weight-loader-seed-instance-ip")
DYNAMIC_TOKENIZER_KNOB = noop("the dynamic batch tokenizer is not used")
TOKEN_HISTOGRAM_KNOB = feature_off("token histograms", "--collect-tokens-histogram")


# Settings of features that are off: many flags share one reason.
SHARED: Dict[FlagPolicy, Tuple[str, ...]] = {
    PRIORITY_KNOB: (
        "schedule_low_priority_values_first", "priority_scheduling_preemption_threshold"),
    DP_ATTN_KNOB: (
        "enable_prefill_delayer", "prefill_delayer_max_delay_passes",
        "prefill_delayer_token_usage_low_watermark", "prefill_delayer_queue_min_ratio",
        "prefill_delayer_max_delay_ms", "prefill_delayer_forward_passes_buckets",
        "prefill_delayer_wait_seconds_buckets", "enable_dp_lm_head"),
    OFFLOAD_KNOB: (
        "offload_num_in_group", "offload_prefetch_step", "offload_mode"),
    PDMUX_KNOB: (
        "pdmux_config_path", "sm_group_num"),
    DOUBLE_SPARSITY_KNOB: (
        "ds_channel_config_path", "ds_heavy_channel_num", "ds_heavy_token_num",
        "ds_heavy_channel_type", "ds_sparse_decode_threshold"),
    PIECEWISE_KNOB: (
        "piecewise_cuda_graph_tokens", "piecewise_cuda_graph_compiler",
        "piecewise_cuda_graph_max_tokens"),
    REMOTE_LOADER_KNOB: (
        "remote_instance_weight_loader_seed_instance_service_port",
        "remote_instance_weight_loader_send_weights_group_ports",
        "remote_instance_weight_loader_backend"),
    DYNAMIC_TOKENIZER_KNOB: (
        "dynamic_batch_tokenizer_batch_size", "dynamic_batch_tokenizer_batch_timeout"),
    TOKEN_HISTOGRAM_KNOB: (
        "prompt_tokens_buckets", "generation_tokens_buckets"),
    MOE_KNOB: (
        "moe_runner_backend", "flashinfer_mxfp4_moe_precision", "deepep_mode",
        "deepep_dispatcher_output_dtype", "enable_fused_grouped_gemm_combine",
        "ep_num_redundant_experts", "ep_dispatch_algorithm", "init_expert_location",
        "enable_eplb", "eplb_algorithm", "eplb_rebalance_num_iterations",
        "eplb_rebalance_layers_per_chunk", "eplb_min_rebalancing_utilization_threshold",
        "expert_distribution_recorder_mode", "expert_distribution_recorder_buffer_size",
        "enable_expert_distribution_metrics", "deepep_config", "moe_dense_tp_size",
        "enable_elastic_expert_backup", "mooncake_ib_device",
        "disable_flashinfer_cutlass_moe_fp4_allgather", "disable_shared_experts_fusion"),
    TP_KNOB: (
        "enable_quant_communications", "enable_flashinfer_allreduce_fusion",
        "enable_aiter_allreduce_fusion", "enable_nccl_nvls", "enable_symm_mem",
        "disable_custom_all_reduce", "enable_mscclpp", "enable_torch_symm_mem",
        "enable_p2p_check", "enable_attn_tp_input_scattered"),
    PP_KNOB: (
        "enable_dynamic_chunking", "pp_max_micro_batch_size", "pp_async_batch_depth"),
    LORA_KNOB: (
        "enable_lora_overlap_loading", "max_lora_rank", "lora_target_modules",
        "max_loras_per_batch", "max_loaded_loras", "lora_eviction_policy", "lora_backend",
        "max_lora_chunk_size", "lora_drain_wait_threshold"),
    SPEC_KNOB: (
        "speculative_draft_model_revision", "speculative_draft_load_format",
        "speculative_token_map", "speculative_attention_mode",
        "speculative_draft_attention_backend", "speculative_moe_runner_backend",
        "speculative_moe_a2a_backend", "speculative_draft_model_quantization",
        "speculative_ngram_capacity", "enable_draft_weights_cpu_backup",
        "decrypted_draft_config_file"),
    MM_KNOB: (
        "enable_multimodal", "mm_attention_backend", "disable_fast_image_processor",
        "keep_mm_feature_on_device", "enable_precise_embedding_interpolation",
        "mm_max_concurrent_calls", "mm_per_request_timeout", "enable_broadcast_mm_inputs_process",
        "mm_process_config",
        "enable_mm_global_cache", "enable_prefix_mm_cache"),
    MAMBA_KNOB: (
        "max_mamba_cache_size", "mamba_ssm_dtype", "mamba_full_memory_ratio",
        "mamba_scheduler_strategy", "mamba_track_interval"),
    HICACHE_KNOB: (
        "hicache_ratio", "hicache_size", "hicache_write_policy", "hicache_io_backend",
        "hicache_mem_layout", "hicache_storage_prefetch_policy",
        "hicache_storage_backend_extra_config"),
    DSA_KNOB: (
        "dsa_prefill_backend", "dsa_decode_backend", "flashinfer_mla_disable_ragged",
        "disable_chunked_prefix_cache", "enable_dsa_prefill_context_parallel",
        "dsa_prefill_cp_mode", "nsa_prefill", "nsa_decode", "enable_flashinfer_mla"),
    KT_KNOB: (
        "kt_method", "kt_cpuinfer", "kt_threadpool_count", "kt_num_gpu_experts",
        "kt_max_deferred_experts_per_token"),
    DISAGG_KNOB: (
        "disaggregation_transfer_backend", "disaggregation_bootstrap_port",
        "disaggregation_ib_device", "disaggregation_decode_enable_offload_kvcache",
        "num_reserved_decode_tokens", "disaggregation_decode_polling_interval",
        "encoder_transfer_backend"),
    FP_GEMM_KNOB: (
        "fp8_gemm_backend", "fp4_gemm_backend"),
    GRAMMAR_OFF: (
        "constrained_json_whitespace_pattern", "disable_outlines_disk_cache",
        "disable_disk_cache"),
}
