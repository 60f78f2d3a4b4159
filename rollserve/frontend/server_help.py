"""One line of `rollserve serve --help` for every ServerArgs field (frontend/server_args.py);
"(default: ...)" is added where the default is a value. A test checks every field has one."""

# One line of --help for every field; "(default: ...)" is added where the default is a value.
HELP = {
    "limit_mm_data_per_request": "VLMs: the most items of each modality one request may carry, "
                                 "as JSON, e.g. '{\"image\": 4}' (default: 16 images)",
    "mm_enable_dp_encoder": "VLMs under --tp-size > 1: each rank encodes a share of a prefill's "
                            "new images with its vision tower and the ranks all-gather the "
                            "features, instead of every rank encoding all of them (default: off)",
    "enable_return_routed_experts": "MoE models: keep the expert ids every layer chose for every "
                                    "token, so /generate's return_routed_experts can answer them "
                                    "(meta_info.routed_experts; default: off)",
    "disable_mla": "DeepSeek-V2/V3: attend over expanded per-head K/V instead of the latent "
                   "cache (default: off)",
    "enable_deterministic_inference": "batch-invariant kernels and attention, a seed per "
                                      "request: the same request gives bitwise the same tokens "
                                      "and logprobs in any batch, chunking and cache state "
                                      "(slower; no CUDA graphs) (default: off)",
    "model_path": "HF-format model folder (default: the embedded SmolLM2-135M-Instruct, or "
                  "all-MiniLM-L6-v2 with --is-embedding)",
    "tokenizer_path": "tokenizer folder (default: the model folder)",
    "served_model_name": "the model name /v1/models shows and requests may use (default: the "
                         "model path)",
    "chat_template": "a built-in template name (chatml, qwen, llama-2-chat, llama-3-instruct, "
                     "llama-4, mistral, gemma-it, deepseek-v3, ...) or a .jinja / SGLang .json "
                     "file (default: the tokenizer's own)",
    "hf_chat_template_name": "which of the tokenizer's named chat templates to use (default: "
                             "its default one)",
    "tool_call_parser": "the tool-call format of the model's answers, parsed into tool_calls on "
                        "/v1/chat/completions when a request has tools: qwen25 (qwen; "
                        "<tool_call> JSON), llama3, mistral, deepseekv3 (default: none, the "
                        "calls stay in the content)",
    "reasoning_parser": "split <think> reasoning into reasoning_content: deepseek-r1 and "
                        "qwen3-thinking (the answer starts in the reasoning), qwen3 (when it "
                        "opens with <think>) (default: none)",
    "dtype": "weights and activations; auto: the config's dtype on CUDA (float32 -> bfloat16), "
             "float32 on CPU",
    "context_length": "the model's maximum context length (default: max_position_embeddings "
                      "of config.json)",
    "load_format": "auto/safetensors/pt read the checkpoint; dummy makes random weights; "
                   "sharded_state reads the per-rank files of `rollserve convert`",
    "trust_remote_code": "allow custom code in the model folder (transformers' trust_remote_code)",
    "is_embedding": "serve an embedding or reward model (/encode, /v1/embeddings, /classify)",
    "host": "the address the HTTP server listens on",
    "port": "the port the HTTP server listens on",
    "api_key": "require Authorization: Bearer KEY on every endpoint but /health (default: none)",
    "max_request_body_bytes": "largest request body accepted (413 above); "
                              "/update_weights_from_tensor has no limit",
    "device": "cuda, cuda:N or cpu (default: cuda when available, else cpu)",
    "mem_fraction_static": "share of device memory for weights + KV pool, a draft model's "
                           "weights and KV included (default: 0.85 on CUDA; on CPU the KV "
                           "pool takes 0.1 of total host memory minus the weights)",
    "max_total_tokens": "size of the target's KV pool in tokens (a draft model's one-layer "
                        "pool matches it); overrides --mem-fraction-static (default: sized "
                        "from memory)",
    "max_running_requests": "most requests decoding at once (default: 1024 on CUDA, 256 on CPU, "
                            "at most the pool size)",
    "max_prefill_tokens": "new prompt tokens one prefill step may take",
    "chunked_prefill_size": "new tokens of one request per prefill step; -1 disables chunking "
                            "(default: per device)",
    "schedule_policy": "order of waiting requests: fcfs, lpm (longest prefix match), dfs-weight, "
                       "random",
    "schedule_conservativeness": "larger: admit fewer requests, retract less",
    "disable_radix_cache": "turn off prefix caching",
    "allow_auto_truncate": "cut over-long prompts (keeping their start) so that max_new_tokens "
                           "still fits, instead of answering 400",
    "random_seed": "seed for sampling without a per-request seed (default: random)",
    "stream_interval": "tokens between two streamed chunks",
    "custom_logit_processor": "MODULE:ATTRIBUTE of a callable (logits[n, V], [custom_params]) -> "
                              "logits applied to requests that set sampling_params.custom_params "
                              "(SGLang's custom logit processor, as server-side code; default: none)",
    "grammar_backend": "constrained decoding of sampling_params json_schema / regex / ebnf and "
                       "OpenAI response_format: xgrammar, or none to refuse such requests",
    "constrained_json_disable_any_whitespace": "JSON schemas take json.dumps' layout (one "
                                               "space after , and :) instead of any whitespace",
    "disable_jump_forward": "sample every token of a constrained request, also those its "
                            "grammar forces (jump-forward is off anyway under the overlap "
                            "scheduler and speculative decoding, as in SGLang)",
    "trust_local_pickled_tensors": "accept SGLang's pickled update_weights_from_tensor payloads "
                                   "(verl, slime flattened_bucket) from 127.0.0.1 only; a pickle "
                                   "runs code, so only with a trainer on this host you trust",
    "enable_memory_saver": "CUDA: allocate weights and KV pool through torch_memory_saver, so "
                           "release/resume_memory_occupation keep their addresses",
    "attention_backend": "triton (default on CUDA), torch_native (default on CPU), flashinfer",
    "cuda_graph_max_bs": "capture decode CUDA graphs for batch sizes up to this (default 512)",
    "cuda_graph_bs": "the decode batch sizes to capture, e.g. --cuda-graph-bs 1 2 4 8 16 "
                     "(default: up to --cuda-graph-max-bs)",
    "disable_cuda_graph": "run decode without CUDA graphs",
    "disable_overlap_schedule": "run each step's CPU work after its GPU work instead of beside it",
    "enable_torch_compile": "torch.compile the decode forward for batch sizes <= "
                            "--torch-compile-max-bs",
    "torch_compile_max_bs": "largest batch size torch.compile covers",
    "log_level": "log level of every process",
    "log_level_http": "log level of the HTTP server's own (uvicorn) log (default: warning)",
    "log_requests": "log every request (id, prompt length, sampling parameters) and the "
                    "access log",
    "decode_log_interval": "log the running batch and throughput every this many decode "
                           "steps (0: never)",
    "enable_metrics": "serve Prometheus metrics at /metrics",
    "watchdog_timeout": "seconds a forward step may take before the server is declared dead",
    "tp_size": "tensor-parallel ranks of one replica: one scheduler process per rank, heads, "
               "MLP and vocabulary split over them (NCCL on CUDA, gloo on CPU)",
    "ep_size": "expert parallel: 1 (each MoE expert's rows split over the TP ranks, like an "
               "MLP) or tp_size (whole experts split over the TP ranks; the router runs on "
               "every rank and one all-reduce combines the experts' outputs)",
    "enable_dp_attention": "attention data-parallel: with --dp-size equal to --tp-size, each "
                           "rank holds the whole attention and dense layers and runs its own "
                           "requests; the MoE experts are split over the ranks, which exchange "
                           "their tokens at each MoE layer (CPU gloo and CUDA NCCL; eager, under the "
                           "overlap scheduler as SGLang)",
    "moe_a2a_backend": "deepep: under --enable-dp-attention, each rank routes its own tokens and "
                       "sends each (token, expert) copy to the rank holding that expert and back "
                       "(all-to-all over torch.distributed, not the DeepEP library; sets --ep-size "
                       "to --tp-size); none: every rank gathers all ranks' tokens and one "
                       "all-reduce combines",
    "enable_deepep_moe": "deprecated in SGLang: the same as --moe-a2a-backend deepep",
    "enable_ep_moe": "deprecated in SGLang: the same as --ep-size equal to --tp-size",
    "dp_size": "data-parallel replicas (each with its own tp_size ranks) behind this one "
               "endpoint, balanced by the router (frontend/router.py)",
    "load_balance_method": "how --dp-size's router picks a replica: round_robin, "
                           "shortest_queue, or cache_aware (auto: cache_aware, which keeps a "
                           "shared prefix on the replica that cached it)",
    "nnodes": "nodes one replica's TP ranks span (tp_size / nnodes ranks per node)",
    "node_rank": "this node's index; node 0 serves HTTP, the others run only TP ranks",
    "dist_init_addr": "host:port where the TP ranks meet (default: a free port on 127.0.0.1; "
                      "required with --nnodes > 1)",
    "base_gpu_id": "the first CUDA device this server's ranks use",
    "dist_timeout": "seconds init_weights_update_group waits for the trainer to join and "
                    "update_weights_from_distributed for its broadcast (both beside generation, "
                    "not in its way; default: 300); the tensor-parallel group's collectives wait "
                    "as long (default there: torch's)",
    "shutdown_grace_period": "on SIGTERM, seconds in-flight requests get to finish; then each is "
                             "answered with a 503 error (streams: an error event and [DONE])",
    "weight_version": "version label of the weights loaded at start (/get_model_info, "
                      "meta_info)",
    "speculative_algorithm": "speculative decoding: drafts verified by the model in one "
                             "forward, exact in distribution; NGRAM (the request's own prompt "
                             "and output), EAGLE / EAGLE3 (a draft head), NEXTN (DeepSeek's MTP "
                             "layer); all of them under --enable-dp-attention too, each rank "
                             "drafting for its own requests (STANDALONE: not implemented) "
                             "(default: off)",
    "speculative_draft_model_path": "EAGLE / EAGLE3: the draft head's folder "
                                    "(LlamaForCausalLMEagle / LlamaForCausalLMEagle3 safetensors; default: none, "
                                    "which NEXTN and a DeepSeek model's EAGLE take as the "
                                    "model's own MTP layer)",
    "speculative_num_steps": "draft steps per verify step: a chain's drafts, a tree's depth "
                             "(default: 3)",
    "speculative_eagle_topk": "EAGLE / EAGLE3 / NEXTN: children each draft step expands per "
                              "frontier node; > 1 drafts a tree verified with a tree attention "
                              "mask (default: 1, a chain)",
    "speculative_num_draft_tokens": "tokens per request and verify step: the last one plus the "
                                    "drafts (a tree's nodes); a chain's overrides "
                                    "--speculative-num-steps (default: num_steps * topk + 1; "
                                    "NGRAM: num_steps + 1, else 12 as in SGLang)",
    "speculative_ngram_max_trie_depth": "NGRAM: the longest context match plus the drafts, in "
                                        "tokens",
    "speculative_ngram_min_bfs_breadth": "NGRAM trees: children per node under the longest "
                                         "context match (shorter matches get more, up to the max)",
    "speculative_ngram_max_bfs_breadth": "NGRAM: children per node for a one-token match; > 1 "
                                         "drafts a tree of earlier continuations (SGLang sets "
                                         "--speculative-eagle-topk to it), 1 a chain",
    "speculative_ngram_match_type": "NGRAM trees: BFS takes each node's latest continuations "
                                    "first, PROB its most frequent ones",
    "speculative_ngram_min_match_window_size": "NGRAM: the shortest context match that drafts "
                                               "(older SGLang releases; the chain's is 2 at least)",
    "speculative_ngram_max_match_window_size": "NGRAM: the longest context match compared (older "
                                               "SGLang releases; default: trees every length up "
                                               "to --speculative-ngram-max-trie-depth - 1, the "
                                               "chain that depth minus the tokens of a step)",
}
