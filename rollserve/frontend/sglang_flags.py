"""SGLang's server flags, as its documentation lists them (docs/advanced_features/
server_arguments.md of sgl-project/sglang, read 2026-11; plus a few flags older releases
documented and launch lines still carry).

This is data, not policy: what rollserve does with each flag is decided in
frontend/flag_table.py. One line per flag:

    dest | --flag [--alias ...] | type | default | choices (space-separated, optional)

type is str, int, float, bool (a switch), list[str] / list[int] / list[float] (nargs),
or json (a JSON string). The default is SGLang's: None, True/False, a number, or a
string ("" for the empty string).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

_ATTENTION = ("triton torch_native flex_attention dsa nsa cutlass_mla fa3 fa4 flashinfer flashmla "
              "trtllm_mla trtllm_mha dual_chunk_flash_attn aiter wave intel_amx ascend")

_TABLE = f"""
# Model and tokenizer
model_path | --model-path --model | str | None
tokenizer_path | --tokenizer-path | str | None
tokenizer_mode | --tokenizer-mode | str | auto | auto slow
tokenizer_worker_num | --tokenizer-worker-num | int | 1
skip_tokenizer_init | --skip-tokenizer-init | bool | False
load_format | --load-format | str | auto | auto pt safetensors npcache dummy sharded_state gguf bitsandbytes layered flash_rl remote remote_instance fastsafetensors private runai_streamer
model_loader_extra_config | --model-loader-extra-config | str | {{}}
trust_remote_code | --trust-remote-code | bool | False
context_length | --context-length | int | None
is_embedding | --is-embedding | bool | False
enable_multimodal | --enable-multimodal | bool | None
revision | --revision | str | None
model_impl | --model-impl | str | auto
# HTTP server
host | --host | str | 127.0.0.1
port | --port | int | 30000
fastapi_root_path | --fastapi-root-path | str | ""
grpc_mode | --grpc-mode | bool | False
skip_server_warmup | --skip-server-warmup | bool | False
warmups | --warmups | str | None
nccl_port | --nccl-port | int | None
checkpoint_engine_wait_weights_before_ready | --checkpoint-engine-wait-weights-before-ready | bool | False
# Quantization and data type
dtype | --dtype | str | auto | auto half float16 bfloat16 float float32
quantization | --quantization | str | None | awq fp8 gptq marlin gptq_marlin awq_marlin bitsandbytes gguf modelopt modelopt_fp8 modelopt_fp4 petit_nvfp4 w8a8_int8 w8a8_fp8 moe_wna16 qoq w4afp8 mxfp4 mxfp8 auto-round compressed-tensors modelslim quark_int4fp8_moe
quantization_param_path | --quantization-param-path | str | None
kv_cache_dtype | --kv-cache-dtype | str | auto | auto fp8_e5m2 fp8_e4m3 bf16 bfloat16 fp4_e2m1
enable_fp32_lm_head | --enable-fp32-lm-head | bool | False
modelopt_quant | --modelopt-quant | str | None
modelopt_checkpoint_restore_path | --modelopt-checkpoint-restore-path | str | None
modelopt_checkpoint_save_path | --modelopt-checkpoint-save-path | str | None
modelopt_export_path | --modelopt-export-path | str | None
quantize_and_serve | --quantize-and-serve | bool | False
rl_quant_profile | --rl-quant-profile | str | None
enable_quant_communications | --enable-quant-communications | bool | False
# Memory and scheduling
mem_fraction_static | --mem-fraction-static | float | None
max_running_requests | --max-running-requests | int | None
max_queued_requests | --max-queued-requests | int | None
max_total_tokens | --max-total-tokens | int | None
chunked_prefill_size | --chunked-prefill-size | int | None
prefill_max_requests | --prefill-max-requests | int | None
enable_dynamic_chunking | --enable-dynamic-chunking | bool | False
max_prefill_tokens | --max-prefill-tokens | int | 16384
schedule_policy | --schedule-policy | str | fcfs | lpm random fcfs dfs-weight lof priority routing-key
enable_priority_scheduling | --enable-priority-scheduling | bool | False
abort_on_priority_when_disabled | --abort-on-priority-when-disabled | bool | False
schedule_low_priority_values_first | --schedule-low-priority-values-first | bool | False
priority_scheduling_preemption_threshold | --priority-scheduling-preemption-threshold | int | 10
schedule_conservativeness | --schedule-conservativeness | float | 1.0
page_size | --page-size | int | 1
swa_full_tokens_ratio | --swa-full-tokens-ratio | float | 0.8
disable_hybrid_swa_memory | --disable-hybrid-swa-memory | bool | False
radix_eviction_policy | --radix-eviction-policy | str | lru | lru lfu
enable_prefill_delayer | --enable-prefill-delayer | bool | False
prefill_delayer_max_delay_passes | --prefill-delayer-max-delay-passes | int | 30
prefill_delayer_token_usage_low_watermark | --prefill-delayer-token-usage-low-watermark | float | None
prefill_delayer_queue_min_ratio | --prefill-delayer-queue-min-ratio | float | None
prefill_delayer_max_delay_ms | --prefill-delayer-max-delay-ms | float | 5000
prefill_delayer_forward_passes_buckets | --prefill-delayer-forward-passes-buckets | list[float] | None
prefill_delayer_wait_seconds_buckets | --prefill-delayer-wait-seconds-buckets | list[float] | None
# Runtime options
device | --device | str | None
tp_size | --tensor-parallel-size --tp-size | int | 1
pp_size | --pipeline-parallel-size --pp-size | int | 1
attn_cp_size | --attention-context-parallel-size --attn-cp-size | int | 1
moe_dp_size | --moe-data-parallel-size --moe-dp-size | int | 1
pp_max_micro_batch_size | --pp-max-micro-batch-size | int | None
pp_async_batch_depth | --pp-async-batch-depth | int | 0
stream_interval | --stream-interval | int | 1
incremental_streaming_output | --incremental-streaming-output | bool | False
random_seed | --random-seed | int | None
constrained_json_whitespace_pattern | --constrained-json-whitespace-pattern | str | None
constrained_json_disable_any_whitespace | --constrained-json-disable-any-whitespace | bool | False
watchdog_timeout | --watchdog-timeout | float | 300
soft_watchdog_timeout | --soft-watchdog-timeout | float | None
dist_timeout | --dist-timeout | int | None
download_dir | --download-dir | str | None
model_checksum | --model-checksum | str | None
base_gpu_id | --base-gpu-id | int | 0
gpu_id_step | --gpu-id-step | int | 1
sleep_on_idle | --sleep-on-idle | bool | False
custom_sigquit_handler | --custom-sigquit-handler | str | None
# Logging
log_level | --log-level | str | info
log_level_http | --log-level-http | str | None
log_requests | --log-requests | bool | False
log_requests_level | --log-requests-level | int | 2 | 0 1 2 3
log_requests_format | --log-requests-format | str | text | text json
log_requests_target | --log-requests-target | list[str] | None
uvicorn_access_log_exclude_prefixes | --uvicorn-access-log-exclude-prefixes | list[str] | []
crash_dump_folder | --crash-dump-folder | str | None
show_time_cost | --show-time-cost | bool | False
enable_metrics | --enable-metrics | bool | False
enable_mfu_metrics | --enable-mfu-metrics | bool | False
enable_metrics_for_all_schedulers | --enable-metrics-for-all-schedulers | bool | False
tokenizer_metrics_custom_labels_header | --tokenizer-metrics-custom-labels-header | str | x-custom-labels
tokenizer_metrics_allowed_custom_labels | --tokenizer-metrics-allowed-custom-labels | list[str] | None
bucket_time_to_first_token | --bucket-time-to-first-token | list[float] | None
bucket_inter_token_latency | --bucket-inter-token-latency | list[float] | None
bucket_e2e_request_latency | --bucket-e2e-request-latency | list[float] | None
collect_tokens_histogram | --collect-tokens-histogram | bool | False
prompt_tokens_buckets | --prompt-tokens-buckets | list[str] | None
generation_tokens_buckets | --generation-tokens-buckets | list[str] | None
gc_warning_threshold_secs | --gc-warning-threshold-secs | float | 0.0
decode_log_interval | --decode-log-interval | int | 40
enable_request_time_stats_logging | --enable-request-time-stats-logging | bool | False
kv_events_config | --kv-events-config | str | None
enable_trace | --enable-trace | bool | False
otlp_traces_endpoint | --otlp-traces-endpoint | str | localhost:4317
export_metrics_to_file | --export-metrics-to-file | bool | False
export_metrics_to_file_dir | --export-metrics-to-file-dir | str | None
# API related
api_key | --api-key | str | None
admin_api_key | --admin-api-key | str | None
served_model_name | --served-model-name | str | None
weight_version | --weight-version | str | default
chat_template | --chat-template | str | None
hf_chat_template_name | --hf-chat-template-name | str | None
completion_template | --completion-template | str | None
file_storage_path | --file-storage-path | str | sglang_storage
enable_cache_report | --enable-cache-report | bool | False
reasoning_parser | --reasoning-parser | str | None | deepseek-r1 deepseek-v3 glm45 gpt-oss kimi qwen3 qwen3-thinking step3
tool_call_parser | --tool-call-parser | str | None | deepseekv3 deepseekv31 glm glm45 glm47 gpt-oss kimi_k2 llama3 mistral pythonic qwen qwen25 qwen3_coder step3 gigachat3
tool_server | --tool-server | str | None
sampling_defaults | --sampling-defaults | str | model | openai model
# Data parallelism
dp_size | --data-parallel-size --dp-size | int | 1
load_balance_method | --load-balance-method | str | auto | auto round_robin follow_bootstrap_room total_requests total_tokens shortest_queue minimum_tokens
# Multi-node distributed serving
dist_init_addr | --dist-init-addr --nccl-init-addr | str | None
nnodes | --nnodes | int | 1
node_rank | --node-rank | int | 0
# Model override args
json_model_override_args | --json-model-override-args | str | {{}}
preferred_sampling_params | --preferred-sampling-params | str | None
# LoRA
enable_lora | --enable-lora | bool | False
enable_lora_overlap_loading | --enable-lora-overlap-loading | bool | False
max_lora_rank | --max-lora-rank | int | None
lora_target_modules | --lora-target-modules | list[str] | None | q_proj k_proj v_proj o_proj gate_proj up_proj down_proj qkv_proj gate_up_proj all
lora_paths | --lora-paths | list[str] | None
max_loras_per_batch | --max-loras-per-batch | int | 8
max_loaded_loras | --max-loaded-loras | int | None
lora_eviction_policy | --lora-eviction-policy | str | lru | lru fifo
lora_backend | --lora-backend | str | csgmv | triton csgmv ascend torch_native
max_lora_chunk_size | --max-lora-chunk-size | int | 16 | 16 32 64 128
lora_drain_wait_threshold | --lora-drain-wait-threshold | float | 0.0
# Kernel backends (attention, sampling, grammar, GEMM)
attention_backend | --attention-backend | str | None | {_ATTENTION}
prefill_attention_backend | --prefill-attention-backend | str | None | {_ATTENTION}
decode_attention_backend | --decode-attention-backend | str | None | {_ATTENTION}
sampling_backend | --sampling-backend | str | None | flashinfer pytorch ascend
grammar_backend | --grammar-backend | str | None | xgrammar outlines llguidance none
mm_attention_backend | --mm-attention-backend | str | None | sdpa fa3 fa4 triton_attn ascend_attn aiter_attn
dsa_prefill_backend | --dsa-prefill-backend --nsa-prefill-backend | str | flashmla_sparse | flashmla_sparse flashmla_kv flashmla_auto fa3 tilelang aiter trtllm
dsa_decode_backend | --dsa-decode-backend --nsa-decode-backend | str | fa3 | flashmla_sparse flashmla_kv fa3 tilelang aiter trtllm
fp8_gemm_backend | --fp8-gemm-backend | str | auto | auto deep_gemm flashinfer_trtllm flashinfer_cutlass flashinfer_deepgemm cutlass triton aiter
fp4_gemm_backend | --fp4-gemm-backend | str | flashinfer_cutlass | auto flashinfer_cudnn flashinfer_cutlass flashinfer_trtllm
disable_flashinfer_autotune | --disable-flashinfer-autotune | bool | False
# Speculative decoding
speculative_algorithm | --speculative-algorithm | str | None | EAGLE EAGLE3 NEXTN STANDALONE NGRAM
speculative_draft_model_path | --speculative-draft-model-path --speculative-draft-model | str | None
speculative_draft_model_revision | --speculative-draft-model-revision | str | None
speculative_draft_load_format | --speculative-draft-load-format | str | None
speculative_num_steps | --speculative-num-steps | int | None
speculative_eagle_topk | --speculative-eagle-topk | int | None
speculative_num_draft_tokens | --speculative-num-draft-tokens | int | None
speculative_accept_threshold_single | --speculative-accept-threshold-single | float | 1.0
speculative_accept_threshold_acc | --speculative-accept-threshold-acc | float | 1.0
speculative_token_map | --speculative-token-map | str | None
speculative_attention_mode | --speculative-attention-mode | str | prefill | prefill decode
speculative_draft_attention_backend | --speculative-draft-attention-backend | str | None
speculative_moe_runner_backend | --speculative-moe-runner-backend | str | None
speculative_moe_a2a_backend | --speculative-moe-a2a-backend | str | None
speculative_draft_model_quantization | --speculative-draft-model-quantization | str | None
speculative_ngram_min_bfs_breadth | --speculative-ngram-min-bfs-breadth | int | 1
speculative_ngram_max_bfs_breadth | --speculative-ngram-max-bfs-breadth | int | 10
speculative_ngram_match_type | --speculative-ngram-match-type | str | BFS | BFS PROB
speculative_ngram_max_trie_depth | --speculative-ngram-max-trie-depth --speculative-ngram-branch-length | int | 18
speculative_ngram_capacity | --speculative-ngram-capacity | int | 10000000
enable_multi_layer_eagle | --enable-multi-layer-eagle | bool | False
# MoE
ep_size | --expert-parallel-size --ep-size --ep | int | 1
moe_a2a_backend | --moe-a2a-backend | str | none | none deepep mooncake mori nixl ascend_fuseep
moe_runner_backend | --moe-runner-backend | str | auto | auto deep_gemm triton triton_kernel flashinfer_trtllm flashinfer_trtllm_routed flashinfer_cutlass flashinfer_mxfp4 flashinfer_cutedsl cutlass
flashinfer_mxfp4_moe_precision | --flashinfer-mxfp4-moe-precision | str | default | default bf16
enable_flashinfer_allreduce_fusion | --enable-flashinfer-allreduce-fusion | bool | False
enable_aiter_allreduce_fusion | --enable-aiter-allreduce-fusion | bool | False
deepep_mode | --deepep-mode | str | auto | normal low_latency auto
deepep_dispatcher_output_dtype | --deepep-dispatcher-output-dtype | str | auto | bf16 fp8 int8 nvfp4 auto
enable_fused_grouped_gemm_combine | --enable-fused-grouped-gemm-combine | bool | False
ep_num_redundant_experts | --ep-num-redundant-experts | int | 0
ep_dispatch_algorithm | --ep-dispatch-algorithm | str | None
init_expert_location | --init-expert-location | str | trivial
enable_eplb | --enable-eplb | bool | False
eplb_algorithm | --eplb-algorithm | str | auto
eplb_rebalance_num_iterations | --eplb-rebalance-num-iterations | int | 1000
eplb_rebalance_layers_per_chunk | --eplb-rebalance-layers-per-chunk | int | None
eplb_min_rebalancing_utilization_threshold | --eplb-min-rebalancing-utilization-threshold | float | 1.0
expert_distribution_recorder_mode | --expert-distribution-recorder-mode | str | None
expert_distribution_recorder_buffer_size | --expert-distribution-recorder-buffer-size | int | None
enable_expert_distribution_metrics | --enable-expert-distribution-metrics | bool | False
deepep_config | --deepep-config | str | None
moe_dense_tp_size | --moe-dense-tp-size | int | None
elastic_ep_backend | --elastic-ep-backend | str | none | none mooncake
enable_elastic_expert_backup | --enable-elastic-expert-backup | bool | False
mooncake_ib_device | --mooncake-ib-device | str | None
enable_deepep_waterfill | --enable-deepep-waterfill | bool | False
elastic_ep_rejoin | --elastic-ep-rejoin | bool | False
# Mamba cache
max_mamba_cache_size | --max-mamba-cache-size | int | None
mamba_ssm_dtype | --mamba-ssm-dtype | str | float32 | float32 bfloat16 float16
mamba_full_memory_ratio | --mamba-full-memory-ratio | float | 0.9
mamba_scheduler_strategy | --mamba-scheduler-strategy | str | auto | auto no_buffer extra_buffer
mamba_track_interval | --mamba-track-interval | int | 256
# Hierarchical cache
enable_hierarchical_cache | --enable-hierarchical-cache | bool | False
hicache_ratio | --hicache-ratio | float | 2.0
hicache_size | --hicache-size | int | 0
hicache_write_policy | --hicache-write-policy | str | write_through | write_back write_through write_through_selective
hicache_io_backend | --hicache-io-backend | str | kernel | direct kernel kernel_ascend
hicache_mem_layout | --hicache-mem-layout | str | layer_first | layer_first page_first page_first_direct page_first_kv_split page_head
hicache_storage_backend | --hicache-storage-backend | str | None | file mooncake hf3fs nixl aibrix dynamic eic
hicache_storage_prefetch_policy | --hicache-storage-prefetch-policy | str | best_effort | best_effort wait_complete timeout
hicache_storage_backend_extra_config | --hicache-storage-backend-extra-config | str | None
hierarchical_sparse_attention_extra_config | --hierarchical-sparse-attention-extra-config | str | None
enable_lmcache | --enable-lmcache | bool | False
# KTransformers
kt_weight_path | --kt-weight-path | str | None
kt_method | --kt-method | str | AMXINT4
kt_cpuinfer | --kt-cpuinfer | int | None
kt_threadpool_count | --kt-threadpool-count | int | 2
kt_num_gpu_experts | --kt-num-gpu-experts | int | None
kt_max_deferred_experts_per_token | --kt-max-deferred-experts-per-token | int | None
# Diffusion LLM
dllm_algorithm | --dllm-algorithm | str | None
dllm_algorithm_config | --dllm-algorithm-config | str | None
# Offloading
cpu_offload_gb | --cpu-offload-gb | int | 0
offload_group_size | --offload-group-size | int | -1
offload_num_in_group | --offload-num-in-group | int | 1
offload_prefetch_step | --offload-prefetch-step | int | 1
offload_mode | --offload-mode | str | cpu
multi_item_scoring_delimiter | --multi-item-scoring-delimiter | int | None
# Optimization and debug options
disable_radix_cache | --disable-radix-cache | bool | False
cuda_graph_max_bs | --cuda-graph-max-bs | int | None
cuda_graph_bs | --cuda-graph-bs | list[int] | None
disable_cuda_graph | --disable-cuda-graph | bool | False
disable_cuda_graph_padding | --disable-cuda-graph-padding | bool | False
enable_profile_cuda_graph | --enable-profile-cuda-graph | bool | False
enable_cudagraph_gc | --enable-cudagraph-gc | bool | False
enable_layerwise_nvtx_marker | --enable-layerwise-nvtx-marker | bool | False
enable_nccl_nvls | --enable-nccl-nvls | bool | False
enable_symm_mem | --enable-symm-mem | bool | False
disable_flashinfer_cutlass_moe_fp4_allgather | --disable-flashinfer-cutlass-moe-fp4-allgather | bool | False
enable_tokenizer_batch_encode | --enable-tokenizer-batch-encode | bool | False
disable_tokenizer_batch_decode | --disable-tokenizer-batch-decode | bool | False
disable_outlines_disk_cache | --disable-outlines-disk-cache | bool | False
disable_custom_all_reduce | --disable-custom-all-reduce | bool | False
enable_mscclpp | --enable-mscclpp | bool | False
enable_torch_symm_mem | --enable-torch-symm-mem | bool | False
disable_overlap_schedule | --disable-overlap-schedule | bool | False
enable_mixed_chunk | --enable-mixed-chunk | bool | False
enable_dp_attention | --enable-dp-attention | bool | False
enable_dp_lm_head | --enable-dp-lm-head | bool | False
enable_two_batch_overlap | --enable-two-batch-overlap | bool | False
enable_single_batch_overlap | --enable-single-batch-overlap | bool | False
tbo_token_distribution_threshold | --tbo-token-distribution-threshold | float | 0.48
enable_torch_compile | --enable-torch-compile | bool | False
enable_torch_compile_debug_mode | --enable-torch-compile-debug-mode | bool | False
disable_piecewise_cuda_graph | --disable-piecewise-cuda-graph | bool | False
enforce_piecewise_cuda_graph | --enforce-piecewise-cuda-graph | bool | False
piecewise_cuda_graph_tokens | --piecewise-cuda-graph-tokens | json | None
piecewise_cuda_graph_compiler | --piecewise-cuda-graph-compiler | str | eager | eager inductor
torch_compile_max_bs | --torch-compile-max-bs | int | 32
piecewise_cuda_graph_max_tokens | --piecewise-cuda-graph-max-tokens | int | 4096
torchao_config | --torchao-config | str | ""
enable_nan_detection | --enable-nan-detection | bool | False
enable_p2p_check | --enable-p2p-check | bool | False
triton_attention_reduce_in_fp32 | --triton-attention-reduce-in-fp32 | bool | False
triton_attention_num_kv_splits | --triton-attention-num-kv-splits | int | 8
triton_attention_split_tile_size | --triton-attention-split-tile-size | int | None
num_continuous_decode_steps | --num-continuous-decode-steps | int | 1
delete_ckpt_after_loading | --delete-ckpt-after-loading | bool | False
enable_memory_saver | --enable-memory-saver | bool | False
enable_weights_cpu_backup | --enable-weights-cpu-backup | bool | False
enable_draft_weights_cpu_backup | --enable-draft-weights-cpu-backup | bool | False
allow_auto_truncate | --allow-auto-truncate | bool | False
enable_custom_logit_processor | --enable-custom-logit-processor | bool | False
flashinfer_mla_disable_ragged | --flashinfer-mla-disable-ragged | bool | False
disable_shared_experts_fusion | --disable-shared-experts-fusion | bool | False
disable_chunked_prefix_cache | --disable-chunked-prefix-cache | bool | False
disable_fast_image_processor | --disable-fast-image-processor | bool | False
keep_mm_feature_on_device | --keep-mm-feature-on-device | bool | False
enable_return_hidden_states | --enable-return-hidden-states | bool | False
enable_return_routed_experts | --enable-return-routed-experts | bool | False
scheduler_recv_interval | --scheduler-recv-interval | int | 1
numa_node | --numa-node | list[int] | None
enable_deterministic_inference | --enable-deterministic-inference | bool | False
rl_on_policy_target | --rl-on-policy-target | str | None | fsdp
enable_attn_tp_input_scattered | --enable-attn-tp-input-scattered | bool | False
enable_dsa_prefill_context_parallel | --enable-dsa-prefill-context-parallel --enable-nsa-prefill-context-parallel | bool | False
dsa_prefill_cp_mode | --dsa-prefill-cp-mode --nsa-prefill-cp-mode | str | in-seq-split | in-seq-split round-robin-split
enable_fused_qk_norm_rope | --enable-fused-qk-norm-rope | bool | False
enable_precise_embedding_interpolation | --enable-precise-embedding-interpolation | bool | False
# Dynamic batch tokenizer
enable_dynamic_batch_tokenizer | --enable-dynamic-batch-tokenizer | bool | False
dynamic_batch_tokenizer_batch_size | --dynamic-batch-tokenizer-batch-size | int | 32
dynamic_batch_tokenizer_batch_timeout | --dynamic-batch-tokenizer-batch-timeout | float | 0.002
# Debug tensor dumps
debug_tensor_dump_output_folder | --debug-tensor-dump-output-folder | str | None
debug_tensor_dump_layers | --debug-tensor-dump-layers | json | None
debug_tensor_dump_input_file | --debug-tensor-dump-input-file | str | None
debug_tensor_dump_inject | --debug-tensor-dump-inject | str | False
# PD disaggregation
disaggregation_mode | --disaggregation-mode | str | null | null prefill decode
disaggregation_transfer_backend | --disaggregation-transfer-backend | str | mooncake | mooncake nixl ascend fake
disaggregation_bootstrap_port | --disaggregation-bootstrap-port | int | 8998
disaggregation_ib_device | --disaggregation-ib-device | str | None
disaggregation_decode_enable_offload_kvcache | --disaggregation-decode-enable-offload-kvcache | bool | False
num_reserved_decode_tokens | --num-reserved-decode-tokens | int | 512
disaggregation_decode_polling_interval | --disaggregation-decode-polling-interval | int | 1
# Encode prefill disaggregation
encoder_only | --encoder-only | bool | False
language_only | --language-only | bool | False
encoder_transfer_backend | --encoder-transfer-backend | str | zmq_to_scheduler | zmq_to_scheduler zmq_to_tokenizer mooncake
encoder_urls | --encoder-urls | json | []
# Custom weight loader
custom_weight_loader | --custom-weight-loader | list[str] | None
weight_loader_disable_mmap | --weight-loader-disable-mmap | bool | False
weight_loader_prefetch_checkpoints | --weight-loader-prefetch-checkpoints | bool | False
weight_loader_prefetch_num_threads | --weight-loader-prefetch-num-threads | int | 4
remote_instance_weight_loader_seed_instance_ip | --remote-instance-weight-loader-seed-instance-ip | str | None
remote_instance_weight_loader_seed_instance_service_port | --remote-instance-weight-loader-seed-instance-service-port | int | None
remote_instance_weight_loader_send_weights_group_ports | --remote-instance-weight-loader-send-weights-group-ports | json | None
remote_instance_weight_loader_backend | --remote-instance-weight-loader-backend | str | nccl | transfer_engine nccl
remote_instance_weight_loader_start_seed_via_transfer_engine | --remote-instance-weight-loader-start-seed-via-transfer-engine | bool | False
# PD multiplexing
enable_pdmux | --enable-pdmux | bool | False
pdmux_config_path | --pdmux-config-path | str | None
sm_group_num | --sm-group-num | int | 8
# Configuration file
config | --config | str | None
# Multi-modal
mm_max_concurrent_calls | --mm-max-concurrent-calls | int | 32
mm_per_request_timeout | --mm-per-request-timeout | float | 10.0
enable_broadcast_mm_inputs_process | --enable-broadcast-mm-inputs-process | bool | False
mm_process_config | --mm-process-config | json | {{}}
mm_enable_dp_encoder | --mm-enable-dp-encoder | bool | False
limit_mm_data_per_request | --limit-mm-data-per-request | json | None
enable_mm_global_cache | --enable-mm-global-cache | bool | False
# Checkpoint decryption
decrypted_config_file | --decrypted-config-file | str | None
decrypted_draft_config_file | --decrypted-draft-config-file | str | None
enable_prefix_mm_cache | --enable-prefix-mm-cache | bool | False
# Forward hooks and msProbe dumps
forward_hooks | --forward-hooks | json | None
msprobe_dump_config | --msprobe-dump-config | str | None
# Deprecated (SGLang still parses them to say what replaced them)
enable_ep_moe | --enable-ep-moe | bool | None
enable_deepep_moe | --enable-deepep-moe | bool | None
prefill_round_robin_balance | --prefill-round-robin-balance | bool | None
enable_flashinfer_cutlass_moe | --enable-flashinfer-cutlass-moe | bool | None
enable_flashinfer_cutedsl_moe | --enable-flashinfer-cutedsl-moe | bool | None
enable_flashinfer_trtllm_moe | --enable-flashinfer-trtllm-moe | bool | None
enable_triton_kernel_moe | --enable-triton-kernel-moe | bool | None
enable_flashinfer_mxfp4_moe | --enable-flashinfer-mxfp4-moe | bool | None
crash_on_nan | --crash-on-nan | str | False
hybrid_kvcache_ratio | --hybrid-kvcache-ratio | float | None
load_watch_interval | --load-watch-interval | float | 0.1
nsa_prefill | --nsa-prefill | str | flashmla_sparse
nsa_decode | --nsa-decode | str | flashmla_kv
# Legacy (documented by older SGLang releases; still found in launch lines)
disable_mla | --disable-mla | bool | False
enable_flashinfer_mla | --enable-flashinfer-mla | bool | False
disable_flashinfer | --disable-flashinfer | bool | False
disable_flashinfer_sampling | --disable-flashinfer-sampling | bool | False
disable_jump_forward | --disable-jump-forward | bool | False
disable_disk_cache | --disable-disk-cache | bool | False
enable_overlap_schedule | --enable-overlap-schedule | bool | False
prefill_only_one_req | --prefill-only-one-req | bool | False
enable_double_sparsity | --enable-double-sparsity | bool | False
ds_channel_config_path | --ds-channel-config-path | str | None
ds_heavy_channel_num | --ds-heavy-channel-num | int | 32
ds_heavy_token_num | --ds-heavy-token-num | int | 256
ds_heavy_channel_type | --ds-heavy-channel-type | str | qk | q k qk
ds_sparse_decode_threshold | --ds-sparse-decode-threshold | int | 4096
speculative_ngram_min_match_window_size | --speculative-ngram-min-match-window-size | int | 1
speculative_ngram_max_match_window_size | --speculative-ngram-max-match-window-size | int | 12
"""

# SGLang users write `--tp 2` and `--dp 2` (its own docs do): argparse's prefix matching
# turns them into --tp-size / --dp-size there. Spelled out here, so that adding a flag
# can never make them ambiguous.
SHORT_ALIASES: Dict[str, str] = {"--tp": "tp_size", "--dp": "dp_size"}

TYPES = ("str", "int", "float", "bool", "list[str]", "list[int]", "list[float]", "json")


@dataclass(frozen=True)
class SGLangFlag:
    dest: str  # SGLang's ServerArgs field (the key in its /get_server_info)
    names: Tuple[str, ...]  # the first is the one SGLang's --help shows first
    type: str
    default: Any
    choices: Optional[Tuple[Any, ...]]
    section: str

    @property
    def name(self) -> str:
        """The canonical flag: --<dest with dashes> when SGLang has it, else the first."""
        canonical = "--" + self.dest.replace("_", "-")
        return canonical if canonical in self.names else self.names[0]


def _literal(text: str, kind: str) -> Any:
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    if text == '""':
        return ""
    if kind == "json" or text == "[]":
        return json.loads(text)
    if kind == "int" or kind == "list[int]":
        return int(text)
    if kind == "float" or kind == "list[float]":
        return float(text)
    return text


def _choice(text: str, kind: str) -> Any:
    return int(text) if kind == "int" else text


def _parse(table: str) -> List[SGLangFlag]:
    flags, section = [], ""
    for line in table.strip().splitlines():
        if line.startswith("#"):
            section = line.lstrip("# ").strip()
            continue
        parts = [p.strip() for p in line.split("|")]
        dest, names, kind, default = parts[:4]
        assert kind in TYPES, f"{dest}: unknown type {kind}"
        choices = tuple(_choice(c, kind) for c in parts[4].split()) if len(parts) > 4 else None
        flags.append(SGLangFlag(dest, tuple(names.split()), kind, _literal(default, kind), choices,
                                section))
    return flags


SGLANG_FLAGS: List[SGLangFlag] = _parse(_TABLE)
BY_DEST: Dict[str, SGLangFlag] = {f.dest: f for f in SGLANG_FLAGS}
