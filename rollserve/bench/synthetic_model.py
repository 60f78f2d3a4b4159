"""Model folders for benchmarks without weights: a real architecture's config.json
(bench/configs/NAME) plus a synthetic word-level tokenizer with exactly the config's
vocabulary ("<t0>" ... "<tV-1>"), so the engine runs with --load-format dummy and
detokenizes any id. Prompts are token ids; the text is never read.
"""

from __future__ import annotations

import json
import os
import shutil

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
SHAPES = sorted(name for name in os.listdir(CONFIG_DIR) if not name.startswith("."))


def save_synthetic_tokenizer(out_dir: str, vocab_size: int, eos_token_id: int = 2) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<t{i}>": i for i in range(vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<t0>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<t0>", pad_token="<t0>",
                                        eos_token=f"<t{eos_token_id}>")
    tokenizer.save_pretrained(out_dir)


def materialize(shape: str, out_dir: str) -> str:
    """Writes bench/configs/<shape>/config.json and a synthetic tokenizer into out_dir."""
    source = os.path.join(CONFIG_DIR, shape, "config.json")
    if not os.path.exists(source):
        raise ValueError(f"shape: unknown {shape!r}; known: {SHAPES}")
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(source, os.path.join(out_dir, "config.json"))
    with open(source) as f:
        config = json.load(f)
    eos = config.get("eos_token_id")
    save_synthetic_tokenizer(out_dir, config["vocab_size"], eos[0] if isinstance(eos, list) else eos)
    return out_dir


def materialize_random_weights(shape: str, out_dir: str, dtype: str = "bfloat16",
                               seed: int = 0) -> str:
    """materialize() plus real random weights (transformers' own initialisation, seeded)
    saved as safetensors: for benches that compare the engine with a transformers forward
    of the same weights, which --load-format dummy cannot give (its weights live only in
    the engine)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    materialize(shape, out_dir)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out_dir)
    return out_dir
