"""Vision-language throughput (issue #22), dummy weights, each figure beside transformers':

* vision: images/s of the vision tower alone (rollserve's encode_images against
  transformers' `model.visual`), on --num-images preprocessed images of --image-size pixels;
* engine: a batch of --batch-size prompts, each one image plus --text-len text tokens, answered
  with --output-len tokens (ignore_eos), through rollserve.Engine (the whole server path: image
  processor, scheduler, encoder in the prefill batch, decode) against transformers' generate on
  the same padded batch. tok/s = output tokens / wall time.

    python -m rollserve.bench.vlm --shape qwen2.5-vl-7b --batch-size 32 --output-file vlm.json
    python -m rollserve.bench.vlm --shape qwen2.5-vl-tiny --device cpu   # smoke run
    python -m rollserve.bench.vlm --shape qwen2.5-vl-7b --skip-hf --tp-size 2 --mm-enable-dp-encoder

--distinct-images 0 gives every prompt the same image (a GRPO group: encoded once).
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import tempfile
import time

import numpy as np
import torch

from rollserve.bench.offline import device_name, git_commit, now_iso, write_json
from rollserve.bench.synthetic_model import materialize


def _folder(shape: str, out_dir: str) -> str:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    materialize(shape, out_dir)
    Qwen2VLImageProcessorPil().save_pretrained(out_dir)  # Qwen2-VL's defaults (14-px patches)
    return out_dir


def _images(n: int, size: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    """Give a deleted model's memory back before the next one loads (the engine sizes its KV
    pool from what is free)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (kernels, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


@torch.inference_mode()
def bench_vision(folder: str, args, dtype: torch.dtype) -> dict:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText

    from rollserve.executor.model_loader import load_model

    images = _images(args.num_images, args.image_size)
    pixels = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    grid = pixels["image_grid_thw"].to(args.device)
    values = pixels["pixel_values"].to(args.device, dtype)
    grids = [tuple(g) for g in pixels["image_grid_thw"].tolist()]
    ours = load_model(folder, dtype, args.device, "dummy")
    ours_s = _timed(lambda: ours.encode_images(values, grids), args.device, args.repeats)
    del ours
    _free(args.device)
    config = AutoConfig.from_pretrained(folder)
    with torch.device(args.device):
        ref = AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    hf_s = _timed(lambda: ref.model.visual(values, grid_thw=grid), args.device, args.repeats)
    del ref
    _free(args.device)
    tokens = int(pixels["image_grid_thw"].prod(-1).sum()) // 4
    return {"num_images": args.num_images, "image_size": args.image_size, "lm_tokens": tokens,
            "rollserve_images_per_s": args.num_images / ours_s,
            "transformers_images_per_s": args.num_images / hf_s,
            "speedup": hf_s / ours_s}


def _prompts(folder: str, args, image_seed: int = 2):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    rng = np.random.default_rng(1)
    vocab = min(config.vision_start_token_id, config.text_config.vocab_size) - 1
    distinct = args.distinct_images if args.distinct_images > 0 else 1
    images = _images(distinct, args.image_size, seed=image_seed)
    prompts, chosen = [], []
    for i in range(args.batch_size):
        text = rng.integers(10, vocab, args.text_len).tolist()
        half = args.text_len // 2
        prompts.append(text[:half] + [config.vision_start_token_id, config.image_token_id,
                                      config.vision_end_token_id] + text[half:])
        chosen.append(images[i % distinct])
    return prompts, chosen


def bench_engine(folder: str, args, dtype_name: str) -> dict:
    import rollserve

    prompts, images = _prompts(folder, args)
    params = {"temperature": 0, "max_new_tokens": args.output_len, "ignore_eos": True}
    encoded = [_png_b64(im) for im in images]
    # warm-up on the whole batch shape with other images (the timed run encodes its own)
    warm = [[_png_b64(im)] for im in _prompts(folder, args, image_seed=3)[1]]
    with rollserve.Engine(folder, load_format="dummy", dtype=dtype_name, device=args.device,
                          context_length=args.context_length, log_level="warning",
                          max_total_tokens=args.max_total_tokens, tp_size=args.tp_size,
                          mm_enable_dp_encoder=args.mm_enable_dp_encoder) as engine:
        engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": 4},
                        image_data=warm)
        engine.flush_cache()
        start = time.perf_counter()
        results = engine.generate(input_ids=prompts, sampling_params=params,
                                  image_data=[[e] for e in encoded])
        seconds = time.perf_counter() - start
        expanded = [r["meta_info"]["expanded_input_ids"] for r in results]
    out_tokens = sum(len(r["output_ids"]) for r in results)
    return {"seconds": seconds, "output_tokens": out_tokens, "tok_per_s": out_tokens / seconds,
            "prompt_tokens": sum(len(e) for e in expanded), "expanded": expanded, "images": images}


@torch.inference_mode()
def bench_hf_generate(folder: str, args, dtype: torch.dtype, expanded, images) -> dict:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(folder)
    with torch.device(args.device):
        ref = AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    longest = max(len(e) for e in expanded)
    pad = config.text_config.eos_token_id if isinstance(config.text_config.eos_token_id, int) else 0
    ids = torch.tensor([[pad] * (longest - len(e)) + e for e in expanded], device=args.device)
    mask = torch.tensor([[0] * (longest - len(e)) + [1] * len(e) for e in expanded], device=args.device)
    kwargs = dict(input_ids=ids, attention_mask=mask,
                  pixel_values=pixels["pixel_values"].to(args.device, dtype),
                  image_grid_thw=pixels["image_grid_thw"].to(args.device),
                  mm_token_type_ids=(ids == config.image_token_id).int(),
                  max_new_tokens=args.output_len, min_new_tokens=args.output_len, do_sample=False)
    ref.generate(**{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    _sync(args.device)
    start = time.perf_counter()
    out = ref.generate(**kwargs)
    _sync(args.device)
    seconds = time.perf_counter() - start
    tokens = (out.shape[1] - longest) * len(expanded)
    del ref
    _free(args.device)
    return {"seconds": seconds, "output_tokens": tokens, "tok_per_s": tokens / seconds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="qwen2.5-vl-7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-images", type=int, default=16, help="vision bench: images per forward")
    parser.add_argument("--image-size", type=int, default=448, help="square images, pixels a side")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--distinct-images", type=int, default=-1,
                        help="distinct images over the batch (default: one per prompt; 0: all share one)")
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument("--max-total-tokens", type=int, default=None)
    parser.add_argument("--skip-hf", action="store_true", help="no transformers baselines")
    parser.add_argument("--tp-size", type=int, default=1, help="the engine bench's TP ranks (GPUs)")
    parser.add_argument("--mm-enable-dp-encoder", action="store_true",
                        help="with --tp-size > 1: the ranks share the images to encode")
    parser.add_argument("--output-file", default=None)
    args = parser.parse_args(argv)
    if args.distinct_images < 0:
        args.distinct_images = args.batch_size
    dtype_name = "bfloat16" if args.device.startswith("cuda") else "float32"
    dtype = getattr(torch, dtype_name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(args.shape, tmp)
        result = {"benchmark": "vlm", "date": now_iso(), "commit": git_commit(),
                  "device": device_name() if args.device.startswith("cuda") else "cpu",
                  "shape": args.shape, "dtype": dtype_name,
                  "args": {k: v for k, v in vars(args).items() if k != "output_file"}}
        result["vision"] = bench_vision(folder, args, dtype)
        print(json.dumps({"vision": result["vision"]}), flush=True)
        engine = bench_engine(folder, args, dtype_name)
        expanded, images = engine.pop("expanded"), engine.pop("images")
        result["engine"] = {"rollserve": engine}
        if not args.skip_hf:
            hf = bench_hf_generate(folder, args, dtype, expanded, images)
            result["engine"]["transformers"] = hf
            result["engine"]["speedup"] = engine["tok_per_s"] / hf["tok_per_s"]
        print(json.dumps({"engine": result["engine"]}), flush=True)
    if args.output_file:
        write_json(result, args.output_file)
    return result


if __name__ == "__main__":
    main()
