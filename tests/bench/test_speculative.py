"""The speculative benchmark runs on CPU: plain, NGRAM, oracle and (--algorithm EAGLE) a dummy
EAGLE head's run at forced acceptance, whose greedy outputs equal the plain run's."""

from rollserve.bench import speculative


def test_eagle_oracle_row(tiny_models, tmp_path):
    report = speculative.main(["--model-path", tiny_models["llama"], "--device", "cpu",
                               "--dtype", "float32", "--batch-size", "2", "--input-len", "24",
                               "--output-len", "12", "--algorithm", "EAGLE",
                               "--output-file", str(tmp_path / "out.json")])
    row = report["results"][0]
    assert row["oracle"]["same_as_plain"] and row["eagle"]["same_as_plain"]
    assert row["eagle"]["accept_length"] > 2  # the oracle's drafts hold (3 per step)
    assert (tmp_path / "out.json").exists()


def test_eagle_tree_row(tiny_models):
    """--eagle-topk 2: the dummy head grows real trees; the oracle's tokens down one branch.
    --ngram-max-bfs-breadth 4: NGRAM's row drafts trees too."""
    report = speculative.main(["--model-path", tiny_models["llama"], "--device", "cpu",
                               "--dtype", "float32", "--batch-size", "2", "--input-len", "24",
                               "--output-len", "12", "--algorithm", "EAGLE", "--eagle-topk", "2",
                               "--num-steps", "2", "--num-draft-tokens", "5",
                               "--ngram-max-bfs-breadth", "4"])
    row = report["results"][0]
    assert report["eagle_topk"] == 2 and row["eagle"]["same_as_plain"]
    assert report["ngram_max_bfs_breadth"] == 4 and row["ngram"]["same_as_plain"]
    assert row["eagle"]["accept_length"] > 1.5  # at least the branch's first node holds
