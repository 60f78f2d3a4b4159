"""Draft-model checkpoints shared by the speculative tests (chains: test_model_drafter.py,
trees: test_tree_drafter.py), built once per session."""

import pytest

from tests.executor.moe_checkpoints import save_variant
from tests.scheduler.draft_checkpoints import (add_mtp_layer, save_eagle3_head, save_eagle_head,
                                               save_small_vocab_llama, train_eagle_head)


@pytest.fixture(scope="session")
def heads(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("heads")
    return {"eagle": save_eagle_head(tiny_models["llama"], str(root / "eagle")),
            "eagle3": save_eagle3_head(tiny_models["llama"], str(root / "eagle3"))}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, default_model_dir):
    """(a tiny small-vocabulary Llama, an EAGLE head trained on it)."""
    root = tmp_path_factory.mktemp("trained")
    small = save_small_vocab_llama(str(root / "small"), default_model_dir)
    return small, train_eagle_head(small, str(root / "head"))


@pytest.fixture(scope="session")
def deepseek_with_mtp(tmp_path_factory, default_model_dir):
    folder = str(tmp_path_factory.mktemp("mtp") / "deepseek")
    save_variant("deepseek_v3", folder, tokenizer_dir=default_model_dir)
    return add_mtp_layer(folder)
