#!/usr/bin/env bash
# The GPU suite in one run: kernel and engine GPU tests, one_batch on three real
# architectures' shapes (dummy weights, bf16) with transformers' generate beside it,
# offline throughput (with transformers' generate_batch on the 1B shape), the
# ShareGPT-like 8B run, the nano-vllm workload on Qwen3-0.6B, and the weight-sync bench.
#
#   bash rollserve/bench/gpu_suite.sh [OUT_DIR] [STAGE ...]
#
# OUT_DIR defaults to bench/results/<date>-gpu; STAGES default to all of:
#   tests one_batch offline_1b offline_8b offline_qwen3 weight_sync
# and on request `core_figures` (bs 1/8/64 on 1B and 8B, offline 1B, ShareGPT-like 8B: the
# A/B set for a refactor, run from each tree's root), `profile_8b_sharegpt` (that run with a torch.profiler trace and op table
# of 20 steady-state engine steps), `gemv` (the GEMV microbenchmark), `no_gemv` (one_batch with the GEMV
# kernels off, ROLLSERVE_DISABLE_GEMV=1), `compile` (one_batch bs=1 with --enable-torch-compile, 1B shape),
# `attn_bench` / `gemv_sweep` (config sweeps of decode attention and of the one-row GEMV),
# `tree_attn` (issue #20: the tree-masked attention kernel's tests, then bench/tree_attention.py:
# its error and time per layer beside the torch reference on verify batches),
# `fi_tests` / `fi_bench` / `fi_sharegpt` (the flashinfer backend's tests, one_batch on it
# beside triton, the ShareGPT-like run on it; scripts/flashinfer_device.sh makes flashinfer
# importable there), `attn_tests` (the decode-attention config tests alone), `ab` (one_batch with PDL off, then with the GEMV fusions on: A/B in one run),
# `graph_bs512` (the ShareGPT-like run with decode graphs up to batch 512),
# `sharegpt_sglang_lengths` (that run on lengths with the means of SGLang's ShareGPT run),
# `moe` (issue #19: fused MoE kernel tests and TFLOPS vs a dense GEMM, active-parameter rooflines,
# one_batch and offline on the Qwen3-30B-A3B and DeepSeek-V2-Lite shapes), `ws_tests` (the weight-sync GPU tests: CUDA IPC, memory release, torch_memory_saver,
# NCCL when there are two GPUs, the ctypes NCCL of vLLM's group), `profile` (each kernel's time in a bs=1 decode step), `rollout`
# (issue #17: the GRPO-shaped rollout bench, Qwen3-0.6B 64 prompts x 16 samples 512-1024 in / 1024
# out and Llama-3.1-8B 32 x 16 1024 in / 512 out, ignore_eos, each beside the same samples as
# separate n=1 requests without the radix cache) and `rollout_eos` (the 0.6B run with lengths
# unknown to the scheduler: random stop tokens end a sample after ~600 tokens); ROLLOUT_ARGS adds
# flags to those runs (e.g. --skip-separate for a baseline tree); `grammar` (issue #21: JSON-schema
# constrained decoding against the same batch unconstrained, 8B shape, batch 64); `deterministic` (issue #15:
# --enable-deterministic-inference against the default mode: throughput, batch invariance,
# logprob parity with transformers in bf16, on the Qwen3-0.6B shape with seeded random weights); `tp` (issue #18, two GPUs: TP=2
# against TP=1 with CUDA graphs and overlap, then offline throughput on the 8B shape at TP 1 and 2);
# `vlm` (issue #22: the VLM parity tests, then vision-tower images/s and image+text batch tok/s on
# the Qwen2.5-VL-7B shape beside transformers); `vlm_tp` (issue #22, two GPUs: the VLM tests at
# TP 2, then the 7B-shape image+text batch at TP 1 and 2, and at 2 with --mm-enable-dp-encoder);
# `moe_ep` (issue #19, two GPUs: DP attention's MoE exchange, all-gather + all-reduce beside the
# all-to-all dispatch, parity tests and one block timed).
# `speculative` (issue #20: the speculative tests, then decode bs 1/8/32 with NGRAM drafts and with
# oracle drafts (every draft holds: the verify cost alone) beside plain decoding of the same run,
# on SmolLM2 (real weights: NGRAM's real acceptance) and on the 8B shape (dummy weights), where
# a dummy EAGLE head's run at forced acceptance adds the draft model's cost (--algorithm EAGLE);
# then the same with tree drafts, --eagle-topk 4; and d4 with --disable-overlap-schedule, beside
# the default where speculation runs under the overlap scheduler).
# Each stage writes its JSON and its log into OUT_DIR as it finishes; summary.md is
# rebuilt after every stage (python -m rollserve.bench.gpu_report OUT_DIR).
set -uo pipefail
OUT=${1:-bench/results/$(date -u +%Y-%m-%d)-gpu}
shift || true
STAGES=${*:-tests one_batch offline_1b offline_8b offline_qwen3 weight_sync}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

step() {  # step NAME TIMEOUT_S CMD...: runs, logs to OUT/NAME.log, never aborts the suite
    local name=$1 limit=$2
    shift 2
    # STEP_LIMIT caps every step's limit (a device call has a fixed budget; what ran still reports)
    if [ -n "${STEP_LIMIT:-}" ] && [ "$limit" -gt "$STEP_LIMIT" ]; then limit=$STEP_LIMIT; fi
    echo "== $(date -u +%H:%M:%S) $name: $*" | tee -a "$OUT/suite.log"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name rc=$rc in $((SECONDS - start))s" | tee -a "$OUT/suite.log"
    tail -n 25 "$OUT/$name.log"
    $PY -m rollserve.bench.gpu_report "$OUT" > "$OUT/summary.md" 2>> "$OUT/suite.log"
}

$PY - > "$OUT/env.json" <<'PYEOF'
import json, os, platform, torch, transformers
from rollserve.bench.offline import device_name, git_commit, now_iso
try:
    import triton; triton_version = triton.__version__
except ImportError:
    triton_version = None
print(json.dumps({"date": now_iso(), "device": device_name(), "commit": git_commit(),
                  "torch": torch.__version__, "triton": triton_version,
                  "transformers": transformers.__version__, "python": platform.python_version()}, indent=2))
PYEOF
cat "$OUT/env.json"

for stage in $STAGES; do
  case $stage in
    tests)
      step gpu_tests 900 $PY -m pytest -q -s -m gpu -p no:cacheprovider \
        tests/kernels/test_triton_kernels.py tests/kernels/test_gemv_triton.py tests/kernels/test_decode_attention_configs.py \
        tests/executor/test_gpu_engine.py ;;
    one_batch)
      step one_batch_llama-3.2-1b 200 $PY -m rollserve.bench.one_batch --shape llama-3.2-1b \
        --batch-size 1 8 32 128 --input-len 512 --output-len 64 --hf-baseline \
        --output-file "$OUT/one_batch_llama-3.2-1b.json"
      step one_batch_llama-3.1-8b 240 $PY -m rollserve.bench.one_batch --shape llama-3.1-8b \
        --batch-size 1 8 32 128 --input-len 512 --output-len 64 --hf-baseline \
        --output-file "$OUT/one_batch_llama-3.1-8b.json"
      step one_batch_qwen3-0.6b 150 $PY -m rollserve.bench.one_batch --shape qwen3-0.6b \
        --batch-size 1 8 32 128 --input-len 512 --output-len 64 \
        --output-file "$OUT/one_batch_qwen3-0.6b.json" ;;
    offline_1b)
      step offline_llama-3.2-1b_bs1 120 $PY -m rollserve.bench.offline --shape llama-3.2-1b \
        --num-prompts 1 --input-len 512 --output-len 512 --context-length 4096 --skip-transformers \
        --output-file "$OUT/offline_llama-3.2-1b_bs1.json"
      step offline_llama-3.2-1b 300 $PY -m rollserve.bench.offline --shape llama-3.2-1b \
        --num-prompts 256 --input-len 512 --output-len 256 --context-length 4096 \
        --hf-backend generate_batch --output-file "$OUT/offline_llama-3.2-1b.json" ;;
    offline_8b)
      step offline_llama-3.1-8b_sharegpt 300 $PY -m rollserve.bench.offline --shape llama-3.1-8b \
        --dataset sharegpt-like --num-prompts 1000 --context-length 8192 --skip-transformers \
        --output-file "$OUT/offline_llama-3.1-8b_sharegpt.json" ;;
    sharegpt_sglang_lengths)  # the same run with medians 182 / 99: 231,507 in and 126,620 out
      # tokens, near the 233,369 / 126,886 of SGLang's 1000-prompt ShareGPT run (its PR #1968)
      step offline_llama-3.1-8b_sharegpt_sglang_lengths 300 $PY -m rollserve.bench.offline \
        --shape llama-3.1-8b --dataset sharegpt-like --input-median 182 --output-median 99 \
        --num-prompts 1000 --context-length 8192 --skip-transformers \
        --output-file "$OUT/offline_llama-3.1-8b_sharegpt_sglang_lengths.json" ;;
    profile_8b_sharegpt)  # the ShareGPT-like run with PROFILE_STEPS steps from PROFILE_START profiled
      start=${PROFILE_START:-300}
      step "profile_llama-3.1-8b_sharegpt_$start" 300 $PY -m rollserve.bench.offline --shape llama-3.1-8b \
        --dataset sharegpt-like --num-prompts 1000 --context-length 8192 --skip-transformers \
        --profile-steps "${PROFILE_STEPS:-20}" --profile-start-step "$start" --profile-dir "$OUT" ${PROFILE_STACK:+--profile-with-stack} \
        --output-file "$OUT/profile_llama-3.1-8b_sharegpt_$start.json" ;;
    prefill_8b)  # one 8192-token prefill of 32 prompts (the ShareGPT run's chunk), 8B shape
      step prefill_llama-3.1-8b 200 $PY -m rollserve.bench.one_batch --shape llama-3.1-8b \
        --batch-size 32 32 --input-len 256 --output-len 4 --output-file "$OUT/prefill_llama-3.1-8b.json" ;;
    core_figures)  # the figures a no-behaviour-change refactor must keep, for an A/B of two trees
      # (run the suite from each tree's root): bs 1/8/64 on the 1B and 8B shapes, offline 1B,
      # the ShareGPT-like 8B run
      for shape in llama-3.2-1b llama-3.1-8b; do
        step "one_batch_$shape" 200 $PY -m rollserve.bench.one_batch --shape "$shape" \
          --batch-size 1 8 64 --input-len 512 --output-len 64 --output-file "$OUT/one_batch_$shape.json"
      done
      step offline_llama-3.2-1b 200 $PY -m rollserve.bench.offline --shape llama-3.2-1b \
        --num-prompts 256 --input-len 512 --output-len 256 --context-length 4096 --skip-transformers \
        --output-file "$OUT/offline_llama-3.2-1b.json"
      step offline_llama-3.1-8b_sharegpt 300 $PY -m rollserve.bench.offline --shape llama-3.1-8b \
        --dataset sharegpt-like --num-prompts 1000 --context-length 8192 --skip-transformers \
        --output-file "$OUT/offline_llama-3.1-8b_sharegpt.json" ;;
    offline_qwen3)
      step offline_qwen3-0.6b_nanovllm 200 $PY -m rollserve.bench.offline --shape qwen3-0.6b \
        --dataset uniform --num-prompts 256 --min-len 100 --max-len 1024 --context-length 4096 \
        --skip-transformers --output-file "$OUT/offline_qwen3-0.6b_nanovllm.json" ;;
    moe)  # issue #19: MoE / MLA shapes (dummy weights), their active-parameter rooflines, fused MoE kernel
      step moe_tests 600 $PY -m pytest -q -m gpu -p no:cacheprovider tests/kernels/test_moe.py tests/scheduler/test_moe_gpu.py
      for shape in qwen3-30b-a3b deepseek-v2-lite; do
        step moe_roofline_$shape 120 $PY -m rollserve.bench.moe roofline --shape $shape \
          --batch-size 1 8 32 128 --output-file "$OUT/moe_roofline_$shape.json"
        step moe_kernel_$shape 300 $PY -m rollserve.bench.moe kernel --shape $shape \
          --tokens 1 16 256 4096 --output-file "$OUT/moe_kernel_$shape.json"
        step one_batch_$shape 600 $PY -m rollserve.bench.one_batch --shape $shape --hf-baseline \
          --batch-size 1 8 32 --input-len 512 --output-len 64 --output-file "$OUT/one_batch_$shape.json"
        step offline_$shape 600 $PY -m rollserve.bench.offline --shape $shape --num-prompts 256 \
          --input-len 512 --output-len 256 --skip-transformers --output-file "$OUT/offline_$shape.json"
      done ;;
    compile)
      step one_batch_llama-3.2-1b_compiled 300 $PY -m rollserve.bench.one_batch --shape llama-3.2-1b \
        --batch-size 1 --input-len 512 --output-len 64 --enable-torch-compile \
        --output-file "$OUT/one_batch_llama-3.2-1b_compiled.json" ;;
    fi_tests)  # the flashinfer backend's kernel and engine tests (where flashinfer is installed)
      step flashinfer_tests 600 $PY -m pytest -q -s -m gpu -p no:cacheprovider -k flashinfer \
        tests/executor/attention/test_flashinfer.py tests/executor/test_gpu_engine.py ;;
    fi_bench)  # one_batch on --attention-backend flashinfer and on triton, in the same run
      for shape in ${FI_SHAPES:-llama-3.2-1b llama-3.1-8b}; do
        for backend in flashinfer triton; do
          step "one_batch_${shape}_$backend" 240 $PY -m rollserve.bench.one_batch --shape "$shape" \
            --batch-size 1 8 64 --input-len 512 --output-len 64 --attention-backend "$backend" \
            --output-file "$OUT/one_batch_${shape}_$backend.json"
        done
      done ;;
    fi_sharegpt)  # the ShareGPT-like 8B run on flashinfer
      step offline_llama-3.1-8b_sharegpt_flashinfer 300 $PY -m rollserve.bench.offline --shape llama-3.1-8b \
        --dataset sharegpt-like --num-prompts 1000 --context-length 8192 --skip-transformers \
        --attention-backend flashinfer --output-file "$OUT/offline_llama-3.1-8b_sharegpt_flashinfer.json" ;;
    ws_tests)
      step weight_sync_tests 150 $PY -m pytest -q -s -m gpu -p no:cacheprovider \
        -o faulthandler_timeout=120 tests/weight_sync/test_gpu.py tests/weight_sync/test_vllm_group_gpu.py ;;
    attn_bench)  # the decode-attention config sweep
      step decode_attention 240 $PY -m rollserve.bench.decode_attention --out "$OUT/decode_attention.json" ;;
    gemv_sweep)  # every candidate GEMV config at M = 1, plain and fused
      step gemv_sweep 300 $PY -m rollserve.bench.gemv --m 1 --sweep --models ${GEMV_MODELS:-llama-3.2-1b llama-3.1-8b} \
        --out "$OUT/gemv_sweep.json" ;;
    tree_attn)  # issue #20: the tree kernel's tests, then its time beside the torch reference
      step tree_attn_tests 300 $PY -m pytest -q -x -p no:cacheprovider \
        tests/kernels/test_tree_attention_triton.py tests/executor/attention/test_tree_mask.py
      step tree_attention 300 $PY -m rollserve.bench.tree_attention --out "$OUT/tree_attention.json" ;;
    attn_tests)  # the decode-attention config tests alone (fast check of a kernel change)
      step attn_tests 200 $PY -m pytest -q -x -m gpu -p no:cacheprovider tests/kernels/test_decode_attention_configs.py ;;
    gemv)
      step gemv 150 $PY -m rollserve.bench.gemv --m 1 8 --out "$OUT/gemv.json" ;;
    no_gemv)  # one_batch with F.linear and separate norm / SiLU kernels: the A/B baseline
      for shape in llama-3.2-1b llama-3.1-8b; do
        step "no_gemv_$shape" 200 env ROLLSERVE_DISABLE_GEMV=1 $PY -m rollserve.bench.one_batch \
          --shape "$shape" --batch-size 1 8 --input-len 512 --output-len 64 \
          --output-file "$OUT/no_gemv_$shape.json"
      done ;;
    ab)  # one_batch bs=1/8 with each decode-path switch off in turn, kernels profiled
      for shape in ${PROFILE_SHAPES:-llama-3.2-1b llama-3.1-8b}; do
        for switch in ${AB_SWITCHES:-none ROLLSERVE_DISABLE_PDL ROLLSERVE_GEMV_FUSION}; do
          step "ab_${shape}_$switch" 200 env "${switch/none/ROLLSERVE_AB}=1" $PY -m rollserve.bench.one_batch \
            --shape "$shape" --batch-size 1 8 --input-len 512 --output-len 64 --profile-kernels \
            --output-file "$OUT/ab_${shape}_$switch.json"
        done
      done ;;
    graph_bs512)  # the ShareGPT-like 8B run with decode graphs captured up to 512
      step offline_llama-3.1-8b_sharegpt_graph512 300 $PY -m rollserve.bench.offline --shape llama-3.1-8b \
        --dataset sharegpt-like --num-prompts 1000 --context-length 8192 --skip-transformers \
        --cuda-graph-max-bs 512 --output-file "$OUT/offline_llama-3.1-8b_sharegpt_graph512.json" ;;
    profile)
      for shape in ${PROFILE_SHAPES:-llama-3.2-1b llama-3.1-8b qwen3-0.6b}; do
        step "profile_$shape" 200 $PY -m rollserve.bench.one_batch --shape "$shape" --batch-size 1 8 \
          --input-len 512 --output-len 64 --profile-kernels --output-file "$OUT/profile_$shape.json"
      done ;;
    vlm)  # issue #22: the VLM tests on the GPU, then Qwen2.5-VL-7B shape (dummy weights): vision
          # tower images/s and a batch of 32 image+text prompts (distinct images, then one shared
          # image as in a GRPO group), each beside transformers
      step vlm_tests 600 $PY -m pytest -q -s -m gpu -p no:cacheprovider tests/executor/test_gpu_vlm.py
      step vlm_qwen2.5-vl-7b 900 $PY -m rollserve.bench.vlm --shape qwen2.5-vl-7b --batch-size 32 \
        --num-images 16 --image-size 448 --text-len 128 --output-len 128 \
        --output-file "$OUT/vlm_qwen2.5-vl-7b.json"
      step vlm_qwen2.5-vl-7b_shared 600 $PY -m rollserve.bench.vlm --shape qwen2.5-vl-7b --batch-size 32 \
        --num-images 16 --image-size 448 --text-len 128 --output-len 128 --distinct-images 0 \
        --skip-hf --output-file "$OUT/vlm_qwen2.5-vl-7b_shared.json" ;;
    vlm_tp)  # issue #22: VLMs over NCCL (needs two GPUs); engine tok/s only (--skip-hf)
      step vlm_tp_tests 600 $PY -m pytest -q -s -m gpu -p no:cacheprovider tests/executor/test_gpu_vlm.py
      for run in "1" "2" "2 --mm-enable-dp-encoder"; do
        name="vlm_qwen2.5-vl-7b_tp${run// --mm-enable-dp-encoder/_dp_encoder}"
        step "$name" 600 $PY -m rollserve.bench.vlm --shape qwen2.5-vl-7b --batch-size 32 \
          --num-images 16 --image-size 448 --text-len 128 --output-len 128 --skip-hf \
          --tp-size $run --output-file "$OUT/$name.json"
      done ;;
    rollout)  # issue #17: GRPO-shaped rollouts under KV pressure (dummy weights)
      step rollout_qwen3-0.6b 540 $PY -m rollserve.bench.rollout --shape qwen3-0.6b --load-format dummy \
        --num-prompts 64 --n 16 --min-input-len 512 --max-input-len 1024 --output-len 1024 --ignore-eos \
        --context-length 4096 ${ROLLOUT_ARGS:-} --output-file "$OUT/rollout_qwen3-0.6b.json"
      step rollout_llama-3.1-8b 540 $PY -m rollserve.bench.rollout --shape llama-3.1-8b --load-format dummy \
        --num-prompts 32 --n 16 --input-len 1024 --output-len 512 --ignore-eos \
        --context-length 4096 ${ROLLOUT_ARGS:-} --output-file "$OUT/rollout_llama-3.1-8b.json" ;;
    rollout_eos)  # the 0.6B rollout with output lengths the scheduler cannot know (up to 1024)
      step rollout_qwen3-0.6b_eos 400 $PY -m rollserve.bench.rollout --shape qwen3-0.6b --load-format dummy \
        --num-prompts 64 --n 16 --min-input-len 512 --max-input-len 1024 --output-len 1024 --stop-every 600 \
        --context-length 4096 --skip-separate ${ROLLOUT_ARGS:-} --output-file "$OUT/rollout_qwen3-0.6b_eos.json" ;;
    grammar)  # issue #21: constrained decoding's cost, JSON schema of moderate size, batch 64
      # (the moderate schema also with jump-forward on, in the same run)
      step grammar_tests 300 $PY -m pytest -q -s -m gpu -p no:cacheprovider tests/kernels/test_grammar_mask.py
      for schema in moderate moderate-free-strings; do
        step "grammar_llama-3.1-8b_$schema" 600 $PY -m rollserve.bench.grammar --shape llama-3.1-8b \
          --schema "$schema" --batch-size 64 --max-new-tokens 256 \
          $([ "$schema" = moderate ] && echo --jump-forward) \
          --output-file "$OUT/grammar_llama-3.1-8b_$schema.json"
      done ;;
    deterministic)  # issue #15: --enable-deterministic-inference's cost, invariance, HF bf16 parity
      step deterministic_tests 600 $PY -m pytest -q -s -m gpu -p no:cacheprovider \
        tests/kernels/test_batch_invariant.py
      step deterministic 900 $PY -m rollserve.bench.deterministic --shape qwen3-0.6b --num-prompts 64 --input-len 256 \
        --output-len 64 --output-file "$OUT/deterministic.json" ;;
    tp)  # issue #18: tensor parallel over NCCL (needs two GPUs)
      step tp_tests 600 $PY -m pytest -q -s -m gpu -p no:cacheprovider tests/executor/test_gpu_tp.py
      for tp in 1 2; do
        step "offline_llama-3.1-8b_tp$tp" 400 $PY -m rollserve.bench.offline --shape llama-3.1-8b \
          --num-prompts 256 --input-len 512 --output-len 256 --context-length 4096 --skip-transformers \
          --tp-size "$tp" --output-file "$OUT/offline_llama-3.1-8b_tp$tp.json"
      done ;;
    moe_ep)  # issue #19, two GPUs: DP attention's MoE exchange, all-gather + all-reduce beside
      # the all-to-all dispatch (--moe-a2a-backend deepep): the parity tests, then one block's time
      step moe_ep_tests 600 $PY -m pytest -q -s -m gpu -p no:cacheprovider tests/executor/test_gpu_tp.py -k dp_attention
      for shape in qwen3-30b-a3b deepseek-v2-lite; do
        step moe_dispatch_$shape 600 $PY -m rollserve.bench.moe_dispatch --shape $shape --ranks 2 \
          --tokens 1 64 512 4096 --output-file "$OUT/moe_dispatch_$shape.json"
      done ;;
    speculative)  # issue #20
      step speculative_tests 600 $PY -m pytest -q -s -p no:cacheprovider \
        tests/scheduler/test_speculative.py tests/executor/test_spec_verify.py \
        tests/scheduler/test_model_drafter.py tests/bench/test_speculative.py \
        tests/scheduler/test_tree_drafter.py tests/executor/test_spec_tree.py \
        tests/executor/attention/test_tree_mask.py tests/scheduler/test_overlap_speculative.py \
        tests/kernels/test_tree_attention_triton.py tests/executor/test_verify_graph_runner.py \
        tests/executor/test_cuda_graph_runner.py tests/executor/test_draft_graph_runner.py
      # graph replay (decode with hidden states, chain verify, draft chain steps) against eager
      step spec_graph_tests 900 $PY -m pytest -q -s -m gpu -p no:cacheprovider \
        tests/executor/test_gpu_spec_graphs.py
      step tree_attention 300 $PY -m rollserve.bench.tree_attention --out "$OUT/tree_attention.json"
      step speculative_smollm2 300 $PY -m rollserve.bench.speculative --batch-size 1 8 32 \
        --input-len 512 --output-len 256 --output-file "$OUT/speculative_smollm2.json"
      for drafts in 4 6; do
        step "speculative_llama-3.1-8b_d$drafts" 400 $PY -m rollserve.bench.speculative \
          --shape llama-3.1-8b --dtype bfloat16 --batch-size 1 8 32 --input-len 512 --output-len 256 \
          --num-draft-tokens "$drafts" --algorithm EAGLE \
          --output-file "$OUT/speculative_llama-3.1-8b_d$drafts.json"
      done
      # the d4 run again without overlap (plain and speculative alike): what overlapping the
      # speculative step's outputs and releases with the next verify forward buys
      step speculative_llama-3.1-8b_d4_no_overlap 400 $PY -m rollserve.bench.speculative \
        --shape llama-3.1-8b --dtype bfloat16 --batch-size 1 8 32 --input-len 512 --output-len 256 \
        --num-draft-tokens 4 --disable-overlap-schedule \
        --output-file "$OUT/speculative_llama-3.1-8b_d4_no_overlap.json"
      # tree drafts (--speculative-eagle-topk 4, 3 levels, 7 nodes): the dummy head's real trees
      step speculative_llama-3.1-8b_tree 400 $PY -m rollserve.bench.speculative \
        --shape llama-3.1-8b --dtype bfloat16 --batch-size 1 8 32 --input-len 512 --output-len 256 \
        --num-draft-tokens 8 --algorithm EAGLE --eagle-topk 4 --num-steps 3 \
        --output-file "$OUT/speculative_llama-3.1-8b_tree.json" ;;
    weight_sync)
      step weight_sync 300 $PY -m rollserve.bench.weight_sync --models smollm2-135m llama-3.2-1b \
        --output-file "$OUT/weight_sync.json" ;;
    *) echo "unknown stage $stage" | tee -a "$OUT/suite.log" ;;
  esac
done
cat "$OUT/summary.md"
