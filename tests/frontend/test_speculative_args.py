"""The speculative flags: NGRAM and the draft models resolve to the scheduler's and the
executor's fields; what is not implemented (relaxed acceptance) or out of range stops the start naming the flag."""

import argparse
import dataclasses

import pytest

from rollserve.frontend.server_args import ServerArgs, server_args_from_cli
from tests.frontend.test_flag_table import parser


def test_ngram_resolves_draft_counts():
    """SGLang's NGRAM: 12 tokens a verify step, a tree of breadth
    --speculative-ngram-max-bfs-breadth (SGLang's topk); num_steps alone: a chain's length."""
    config = ServerArgs(model_path="m", speculative_algorithm="NGRAM").scheduler_config()
    assert (config.speculative_algorithm, config.speculative_num_draft_tokens) == ("NGRAM", 12)
    assert (config.speculative_ngram_max_bfs_breadth, config.speculative_eagle_topk,
            config.speculative_ngram_min_bfs_breadth, config.speculative_ngram_match_type) == \
        (10, 10, 1, "BFS")
    steps = ServerArgs(model_path="m", speculative_algorithm="NGRAM", speculative_num_steps=5)
    assert steps.scheduler_config().speculative_num_draft_tokens == 6
    both = ServerArgs(model_path="m", speculative_algorithm="NGRAM", speculative_num_steps=5,
                      speculative_num_draft_tokens=3)
    assert both.scheduler_config().speculative_num_draft_tokens == 3
    assert ServerArgs(model_path="m").scheduler_config().speculative_algorithm is None


@pytest.mark.parametrize("kwargs,field", [
    ({"speculative_algorithm": "EAGLE"}, "speculative_draft_model_path"),
    ({"speculative_algorithm": "EAGLE3"}, "speculative_draft_model_path"),
    ({"speculative_algorithm": "STANDALONE", "speculative_draft_model_path": "/d"},
     "speculative_algorithm"),
    ({"speculative_algorithm": "NGRAM", "speculative_draft_model_path": "/d"},
     "speculative_draft_model_path"),
    ({"speculative_algorithm": "NEXTN", "speculative_draft_model_path": "/d"},
     "speculative_draft_model_path"),
    ({"speculative_algorithm": "NGRAM", "speculative_num_draft_tokens": 1},
     "speculative_num_draft_tokens"),
    ({"speculative_algorithm": "NGRAM", "speculative_num_draft_tokens": 20,
      "speculative_ngram_max_bfs_breadth": 1}, "speculative_ngram_max_trie_depth"),
    ({"speculative_algorithm": "NGRAM", "speculative_ngram_min_bfs_breadth": 0},
     "speculative_ngram_min_bfs_breadth"),
    ({"speculative_algorithm": "NGRAM", "speculative_ngram_min_bfs_breadth": 3,
      "speculative_ngram_max_bfs_breadth": 2}, "speculative_ngram_max_bfs_breadth"),
    ({"speculative_algorithm": "NGRAM", "speculative_ngram_min_match_window_size": 0},
     "speculative_ngram_min_match_window_size"),
    ({"speculative_algorithm": "NGRAM", "speculative_ngram_max_match_window_size": 18},
     "speculative_ngram_max_match_window_size"),
    ({"speculative_algorithm": "NGRAM", "speculative_ngram_min_match_window_size": 4,
      "speculative_ngram_max_match_window_size": 3}, "speculative_ngram_max_match_window_size"),
    # a shortest match longer than any match compared: NGRAM would never draft
    ({"speculative_algorithm": "NGRAM", "speculative_ngram_min_match_window_size": 18},
     "speculative_ngram_min_match_window_size"),
    ({"speculative_algorithm": "NGRAM", "speculative_ngram_max_bfs_breadth": 1,
      "speculative_ngram_min_match_window_size": 7}, "speculative_ngram_min_match_window_size"),
    ({"speculative_algorithm": "NEXTN", "speculative_eagle_topk": 0}, "speculative_eagle_topk")])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        ServerArgs(model_path="m", **kwargs)


@pytest.mark.parametrize("argv", [["--enable-multi-layer-eagle"],
                                  ["--speculative-accept-threshold-single", "0.5"]])
def test_unimplemented_flags_are_refused(argv):
    with pytest.raises(SystemExit, match=argv[0]):
        server_args_from_cli(parser().parse_args(["--speculative-algorithm", "NGRAM"] + argv))


def test_eagle_resolves_the_draft_folder():
    args = server_args_from_cli(parser().parse_args(
        ["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", "/heads/e3",
         "--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
         "--speculative-num-draft-tokens", "4"]))
    config = dataclasses.replace(args, model_path="m").scheduler_config()
    assert (config.speculative_algorithm, config.speculative_draft_model_path,
            config.speculative_num_draft_tokens) == ("EAGLE3", "/heads/e3", 4)
    nextn = ServerArgs(model_path="m", speculative_algorithm="NEXTN").scheduler_config()
    assert nextn.speculative_draft_model_path is None


@pytest.mark.parametrize("parallel", [{"tp_size": 2}, {"dp_size": 2}, {"tp_size": 2, "dp_size": 2}])
def test_draft_models_run_under_tp_and_dp(parallel):
    """The draft runs under the target's TP on every rank, and in every DP replica; the
    executor loads it beside the target (its memory inside the same budget)."""
    for algorithm, path in (("EAGLE", "/d"), ("EAGLE3", "/d"), ("NEXTN", None)):
        args = ServerArgs(model_path="m", speculative_algorithm=algorithm,
                          speculative_draft_model_path=path, speculative_num_steps=2, **parallel)
        draft = args.executor_config().draft
        assert (draft.algorithm, draft.path, draft.num_drafts) == (algorithm, path, 2)
    ngram = ServerArgs(model_path="m", speculative_algorithm="NGRAM", **parallel)
    assert ngram.executor_config().draft is None and ServerArgs(model_path="m").executor_config().draft is None


def test_tree_drafts_resolve_topk_steps_and_nodes():
    """--speculative-eagle-topk > 1: a tree of num_steps levels; its node count defaults to
    num_steps * topk (plus the last token)."""
    argv = ["--speculative-algorithm", "EAGLE", "--speculative-draft-model-path", "/heads/e",
            "--speculative-num-steps", "3", "--speculative-eagle-topk", "4"]
    config = dataclasses.replace(server_args_from_cli(parser().parse_args(argv)),
                                 model_path="m").scheduler_config()
    assert (config.speculative_eagle_topk, config.speculative_num_steps,
            config.speculative_num_draft_tokens) == (4, 3, 13)
    config = ServerArgs(model_path="m", speculative_algorithm="NEXTN", speculative_eagle_topk=2,
                        speculative_num_steps=2, speculative_num_draft_tokens=4).scheduler_config()
    assert (config.speculative_eagle_topk, config.speculative_num_draft_tokens) == (2, 4)


def test_sglang_launch_line_for_ngram_starts():
    """SGLang replaces NGRAM's --speculative-eagle-topk with its max BFS breadth; so does
    rollserve (with a warning)."""
    argv = ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "5",
            "--speculative-eagle-topk", "1", "--speculative-ngram-max-bfs-breadth", "10"]
    args = server_args_from_cli(parser().parse_args(argv))
    config = dataclasses.replace(args, model_path="m").scheduler_config()
    assert (config.speculative_num_draft_tokens, config.speculative_eagle_topk) == (5, 10)
    chain = server_args_from_cli(parser().parse_args(
        ["--speculative-algorithm", "NGRAM", "--speculative-ngram-max-bfs-breadth", "1",
         "--speculative-ngram-match-type", "PROB"]))
    config = dataclasses.replace(chain, model_path="m").scheduler_config()
    assert (config.speculative_ngram_max_bfs_breadth, config.speculative_ngram_match_type) == \
        (1, "PROB")
    old = server_args_from_cli(parser().parse_args(  # older SGLang releases' NGRAM line
        ["--speculative-algorithm", "NGRAM", "--speculative-ngram-min-match-window-size", "2",
         "--speculative-ngram-max-match-window-size", "12",
         "--speculative-ngram-branch-length", "16"]))
    config = dataclasses.replace(old, model_path="m").scheduler_config()
    assert (config.speculative_ngram_min_match_window_size,
            config.speculative_ngram_max_match_window_size,
            config.speculative_ngram_max_trie_depth) == (2, 12, 16)
    with pytest.raises(argparse.ArgumentError, match="match-type"):  # not one of SGLang's two
        parser().parse_args(["--speculative-ngram-match-type", "DFS"])


def test_eagle_without_a_head_on_deepseek_drafts_with_its_mtp_layer(tmp_path):
    """SGLang's DeepSeek line (--speculative-algorithm EAGLE, no draft folder) runs NEXTN."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["DeepseekV3ForCausalLM"]}))
    config = ServerArgs(model_path=str(tmp_path), speculative_algorithm="EAGLE").scheduler_config()
    assert (config.speculative_algorithm, config.speculative_draft_model_path) == ("NEXTN", None)
    own = ServerArgs(model_path=str(tmp_path), speculative_algorithm="NEXTN",
                     speculative_draft_model_path=str(tmp_path)).scheduler_config()
    assert (own.speculative_algorithm, own.speculative_draft_model_path) == ("NEXTN", None)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="^speculative_draft_model_path: "):
        ServerArgs(model_path=str(tmp_path), speculative_algorithm="EAGLE")


@pytest.mark.parametrize("algorithm,path", [("NEXTN", None), ("EAGLE", "/d"), ("EAGLE3", "/d")])
def test_draft_models_run_under_dp_attention(algorithm, path):
    """Each rank drafts for its own requests (executor/draft_lockstep.py keeps NEXTN's MoE
    draft forwards in step), under either scheduler."""
    for overlap_off in (False, True):
        config = ServerArgs(model_path="m", tp_size=2, dp_size=2, enable_dp_attention=True,
                            speculative_algorithm=algorithm, speculative_draft_model_path=path,
                            disable_overlap_schedule=overlap_off).scheduler_config()
        assert config.speculative_algorithm == algorithm
