"""`rollserve eval run` (one-off) and `rollserve eval watch` (every checkpoint of a run).

    rollserve eval run --server http://127.0.0.1:30000 --tasks arithmetic,facts --limit 20
    rollserve eval watch runs/exp1 --launch --tasks facts,perplexity --once
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
from typing import Iterator, List, Optional

from rollserve.core.sampling_params import InvalidRequest

logger = logging.getLogger("rollserve.eval")


# ---- flags ------------------------------------------------------------------------------------
def add_eval_parser(sub) -> None:
    parser = sub.add_parser("eval", help="score a server on tasks, once or for every checkpoint",
                            description="Evaluate through the RolloutClient: `run` once, or "
                                        "`watch` a folder of checkpoints.")
    commands = parser.add_subparsers(dest="eval_command", required=True, metavar="{run,watch}")
    run = commands.add_parser("run", help="score the server once; print a table, write JSONL")
    _add_server_flags(run)
    _add_task_flags(run)
    run.add_argument("--output-dir", default="eval-results",
                     help="where samples.jsonl (per-sample results) and summary.json go")
    watch = commands.add_parser("watch", help="score every new checkpoint in a folder")
    watch.add_argument("checkpoint_dir", help="the folder the trainer writes checkpoints into")
    _add_server_flags(watch)
    _add_task_flags(watch)
    _add_watch_flags(watch)


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--server", action="append",
                       help="base URL of a running server; repeat it (or comma-separate) for "
                            "replicas: requests are spread over them and every checkpoint is "
                            "loaded into each")
    group.add_argument("--launch", action="store_true",
                       help="start a local `rollserve serve` for the evaluation and stop it after")
    group.add_argument("--model-path", help="model of the launched server (default: the baseline, "
                                            "else the first checkpoint, else the default model)")
    group.add_argument("--server-args", default="",
                       help="extra flags for the launched server, e.g. \"--max-total-tokens 20000\"")
    group.add_argument("--launch-port", type=int,
                       help="port of the launched server on 127.0.0.1 (default: a free one)")
    group.add_argument("--api-key", default=os.environ.get("ROLLSERVE_API_KEY"))
    group.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    group.add_argument("--tokenizer", help="tokenizer folder (default: the server's)")
    group.add_argument("--reward-server", help="/classify server for the reward task "
                                               "(default: --server)")
    group.add_argument("--reward-label", type=int, default=0,
                       help="which output of the reward model is the reward")


def _add_task_flags(parser: argparse.ArgumentParser) -> None:
    from rollserve.eval.tasks import BENCHMARKS, BUILTIN_TASKS, DEFAULT_TASKS

    group = parser.add_argument_group("tasks")
    group.add_argument("--tasks", default=DEFAULT_TASKS,
                       help=f"comma-separated: built-in {sorted(BUILTIN_TASKS)}, benchmarks "
                            f"{sorted(BENCHMARKS)} (options after a colon, e.g. "
                            "math500:n=4:temperature=0.6:limit=50), or "
                            "[NAME=]FILE.jsonl|.parquet[#SCORER]; \"\" for none "
                            "(default: %(default)s)")
    group.add_argument("--limit", type=int, help="first N examples of each task")
    group.add_argument("--n", type=int, default=1, help="samples per prompt (pass@k, maj@k)")
    group.add_argument("--temperature", type=float,
                       help="default: 0 for --n 1, else 1.0")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--max-new-tokens", "--max-gen-toks", type=int, dest="max_new_tokens",
                       help="generation length (default: the row's max_gen_toks, else the task's)")
    group.add_argument("--stop", action="append",
                       help="stop string for generation tasks, repeatable (default: the row's "
                            "stop/until, else the task's; user tasks: \"\\n\\n\" and the few-shot "
                            "question label)")
    group.add_argument("--apply-chat-template", action="store_true",
                       help="send generation prompts as one user turn of the tokenizer's chat "
                            "template (lm-eval's --apply_chat_template)")
    group.add_argument("--system-instruction",
                       help="system turn of the chat template (without it: a prefix of the prompt)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--batch-size", type=int, default=32, help="prompts per client call")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--data-dir", help="folder of benchmark data (gsm8k/test.jsonl, ...); "
                                          "default: $ROLLSERVE_EVAL_DATA, then the datasets cache")
    group.add_argument("--lm-eval-tasks",
                       help="comma-separated lm-evaluation-harness tasks, scored with lm-eval's "
                            "own definitions (its registry, or yamls under --include-path)")
    group.add_argument("--include-path", help="folder of lm-eval task yamls for --lm-eval-tasks")


def _add_watch_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("watching")
    group.add_argument("--output-dir", help="default: CHECKPOINT_DIR/eval")
    group.add_argument("--pattern", action="append",
                       help="regex for checkpoint folder names with one group capturing the "
                            "step (repeatable); default: checkpoint-N, global_stepN, "
                            "global_step_N, step_N")
    group.add_argument("--marker", help="a checkpoint is complete once this file exists in it "
                                        "(default: when its files stop changing between polls)")
    group.add_argument("--poll-interval", type=float, default=30.0, help="seconds between looks")
    group.add_argument("--once", action="store_true", help="score what is there, then exit")
    group.add_argument("--baseline", help="model folder scored first, as step 0")
    group.add_argument("--max-checkpoints", type=int, help="exit after this many checkpoints")
    group.add_argument("--order", choices=("oldest", "newest"), default="oldest",
                       help="which checkpoint of a backlog goes first (default: %(default)s)")
    group.add_argument("--every", type=int, default=1,
                       help="score every k-th checkpoint by step, counted from the oldest")
    group.add_argument("--allow-shared-server", action="store_true",
                       help="load checkpoints into a --server that has served other traffic or "
                            "carries a weight_version this watcher did not set")
    group.add_argument("--wandb-mode", choices=("offline", "online", "disabled"),
                       default="offline")
    group.add_argument("--wandb-project", default="rollserve-eval")
    group.add_argument("--wandb-run-name", help="default: the checkpoint folder's name")
    group.add_argument("--wandb-tags", default="", help="comma-separated")
    group.add_argument("--samples-per-task", type=int, default=8,
                       help="sample generations per task in the wandb table")
    group.add_argument("--concurrent-checkpoints", type=int, default=1,
                       help="score this many checkpoints at once, each on its own share of the "
                            "--server URLs (URL i goes to share i mod N)")


# ---- shared set-up --------------------------------------------------------------------------
def _settings(ns):
    from rollserve.eval.tasks.base import EvalSettings

    return EvalSettings(limit=ns.limit, n=ns.n, temperature=ns.temperature, top_p=ns.top_p,
                        max_new_tokens=ns.max_new_tokens, seed=ns.seed, batch_size=ns.batch_size,
                        stop=ns.stop, apply_chat_template=ns.apply_chat_template,
                        system_instruction=ns.system_instruction)


def server_urls(ns) -> List[str]:
    """Every --server URL, repeated flags and comma-separated lists alike. One server named
    twice is refused: as two shares of --concurrent-checkpoints it would hold two
    checkpoints at once, each share swapping the other's weights mid-task."""
    urls = [u.strip() for value in (ns.server or []) for u in value.split(",") if u.strip()]
    seen = {}
    for url in urls:
        key = _server_key(url)
        if key in seen:
            raise InvalidRequest("server", f"{url} and {seen[key]} name the same server; "
                                           "give each server once")
        seen[key] = url
    return urls


def _server_key(url: str) -> tuple:
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = (parts.hostname or "").lower()
    host = "127.0.0.1" if host in ("localhost", "::1", "0.0.0.0") else host
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed port: left for the client to refuse
        port = parts.netloc
    return host, port, parts.path.rstrip("/")


def url_groups(urls: List[str], groups: int) -> List[List[str]]:
    """URLs split into `groups` shares (URL i to share i mod groups), one per checkpoint
    scored at once; each share needs a URL."""
    if groups < 1:
        raise InvalidRequest("concurrent_checkpoints", "must be >= 1")
    if groups > 1 and len(urls) < groups:
        raise InvalidRequest("concurrent_checkpoints",
                             f"{groups} checkpoints at once need at least {groups} --server URLs "
                             f"(a server holds one checkpoint at a time), got {len(urls)}")
    return [urls[i::groups] for i in range(groups)]


@contextlib.contextmanager
def open_clients(ns, model_path: Optional[str], output_dir: str, groups: int = 1) -> Iterator[tuple]:
    """([a policy client per group of servers], reward client or None); a launched server
    (its log in OUTPUT_DIR/server.log) stops on exit, and with this process if it dies."""
    from rollserve.eval.server_process import owned_server
    from rollserve.rollout.client import RolloutClient

    if bool(ns.server) == bool(ns.launch):
        raise InvalidRequest("server", "give --server URL or --launch (one of them)")
    if ns.launch_port is not None and not ns.launch:
        raise InvalidRequest("launch_port", "only applies with --launch")
    if ns.launch and groups > 1:
        raise InvalidRequest("concurrent_checkpoints", "needs --server URLs (--launch starts one "
                                                       "server, which holds one checkpoint)")
    shares = [] if ns.launch else url_groups(server_urls(ns), groups)
    kwargs = dict(api_key=ns.api_key, timeout=ns.timeout, progress=False)
    with contextlib.ExitStack() as stack:
        if ns.launch:
            url = stack.enter_context(owned_server(
                model_path, shlex.split(ns.server_args), output_dir=output_dir,
                port=ns.launch_port, api_key=ns.api_key))
            clients = [stack.enter_context(RolloutClient(url, **kwargs))]
        else:
            clients = [stack.enter_context(RolloutClient(share, **kwargs)) for share in shares]
        reward = None
        if ns.reward_server:
            reward = stack.enter_context(RolloutClient(ns.reward_server, **kwargs))
        yield clients, reward


def _load_tasks(ns):
    from rollserve.eval.tasks import load_tasks
    from rollserve.eval.tasks.reward import RewardTask

    tasks = load_tasks(ns.tasks, data_dir=ns.data_dir) if ns.tasks else []
    if ns.lm_eval_tasks:
        from rollserve.eval.tasks.lm_eval_task import load_lm_eval_tasks

        tasks += load_lm_eval_tasks(ns.lm_eval_tasks, ns.include_path)
    elif ns.include_path:
        raise InvalidRequest("include_path", "only applies with --lm-eval-tasks")
    if not tasks:
        raise InvalidRequest("tasks", "name at least one task (--tasks or --lm-eval-tasks)")
    for task in tasks:
        if isinstance(task, RewardTask):
            task.label = ns.reward_label
    _settings(ns)  # bad flags fail before a server is started
    return tasks


def _context(ns, client, reward):
    from rollserve.eval.tasks.base import EvalContext

    return EvalContext(client=client, settings=_settings(ns), tokenizer_path=ns.tokenizer,
                       reward_client=reward)


# ---- eval run ---------------------------------------------------------------------------------
def cmd_run(ns) -> int:
    from rollserve.eval.console import make_console, results_table
    from rollserve.eval.report import write_jsonl
    from rollserve.eval.runner import run_tasks

    tasks = _load_tasks(ns)
    with open_clients(ns, ns.model_path, os.path.abspath(ns.output_dir)) as (clients, reward):
        ctx = _context(ns, clients[0], reward)
        results = run_tasks(ctx, tasks, console=make_console(stderr=True),
                            progress=not ns.no_progress)
        info = ctx.model_info
    os.makedirs(ns.output_dir, exist_ok=True)
    samples_path = os.path.join(ns.output_dir, "samples.jsonl")
    write_jsonl(samples_path, ({"task": r.task, **s} for r in results for s in r.samples))
    summary = {"model_path": info.get("model_path"), "weight_version": info.get("weight_version"),
               "results": {r.task: {"metrics": r.metrics, "num_examples": r.num_examples,
                                    "seconds": round(r.seconds, 3)} for r in results}}
    with open(os.path.join(ns.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    console = make_console()
    console.print(results_table(results, title=f"{info.get('model_path')} "
                                               f"(weight_version {info.get('weight_version')})"))
    console.print(f"per-sample results: {samples_path}")
    return 0


# ---- eval watch -------------------------------------------------------------------------------
def cmd_watch(ns) -> int:
    from rollserve.eval.checkpoints import DEFAULT_PATTERNS, select
    from rollserve.eval.console import history_table, make_console
    from rollserve.eval.plot import redraw
    from rollserve.eval.report import ResultsLog
    from rollserve.eval.server_guard import SharedServerError
    from rollserve.eval.server_process import output_lock
    from rollserve.eval.wandb_sync import WandbSync
    from rollserve.eval.watch import WatchOptions, Watcher

    root = os.path.abspath(ns.checkpoint_dir)
    if not os.path.isdir(root):
        raise InvalidRequest("checkpoint_dir", f"{root} is not a folder")
    tasks = _load_tasks(ns)
    select([], order=ns.order, every=ns.every)  # bad values fail before a server starts
    url_groups(server_urls(ns), ns.concurrent_checkpoints)
    options = WatchOptions(checkpoint_dir=root,
                           output_dir=os.path.abspath(ns.output_dir or os.path.join(root, "eval")),
                           patterns=ns.pattern or DEFAULT_PATTERNS, marker=ns.marker,
                           poll_interval=ns.poll_interval, once=ns.once, baseline=ns.baseline,
                           max_checkpoints=ns.max_checkpoints, order=ns.order, every=ns.every,
                           allow_shared_server=ns.allow_shared_server)
    console, bars = make_console(), make_console(stderr=True)
    log = ResultsLog(options.output_dir)
    code, wandb_folder = 0, None
    with output_lock(options.output_dir), _log_through(bars), contextlib.ExitStack() as stack:
        try:
            # the server first: a launched one is started before any thread exists
            clients, reward = stack.enter_context(
                open_clients(ns, _launch_model(ns, options), options.output_dir,
                             groups=ns.concurrent_checkpoints))
            wandb = WandbSync(log, project=ns.wandb_project,
                              run_name=ns.wandb_run_name or os.path.basename(root),
                              tags=[t for t in ns.wandb_tags.split(",") if t], mode=ns.wandb_mode,
                              config={"tasks": ns.tasks, "limit": ns.limit, "n": ns.n,
                                      "temperature": ns.temperature, "checkpoint_dir": root},
                              samples_per_task=ns.samples_per_task)
            stack.callback(wandb.finish)
            wandb_folder = wandb.folder
            Watcher(_context(ns, clients[0], reward), tasks, options, wandb=wandb, console=bars,
                    progress=not ns.no_progress,
                    more_contexts=[_context(ns, c, reward) for c in clients[1:]],
                    on_checkpoint=lambda c, rows: _print_checkpoint(console, c, rows)).run()
        except KeyboardInterrupt:
            code = 130
        except SharedServerError as e:
            logger.error("%s", e)
            code = 1
    redraw(log)  # a stop may have cut the last redraw short
    console.print(history_table(log.read(), title=f"eval of {root}"))
    console.print(f"results: {log.path('results.jsonl')}, {log.path('results.csv')}, "
                  f"{log.path('metrics.png')}" + (f"; wandb: {wandb_folder}" if wandb_folder else ""))
    if code == 130:
        console.print("stopped (Ctrl-C); a restart resumes where this left off")
    return code


@contextlib.contextmanager
def _log_through(console) -> Iterator[None]:
    """The watcher's log lines go through the console that draws the progress bars."""
    from rollserve.eval.console import ConsoleLogHandler

    handler = ConsoleLogHandler(console)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    eval_logger = logging.getLogger("rollserve.eval")
    saved = eval_logger.handlers[:], eval_logger.propagate
    eval_logger.handlers[:] = [handler]
    eval_logger.propagate = False
    try:
        yield
    finally:
        eval_logger.handlers[:], eval_logger.propagate = saved


def _launch_model(ns, options) -> Optional[str]:
    if not ns.launch or ns.model_path:
        return ns.model_path
    if options.baseline:
        return options.baseline
    from rollserve.eval.checkpoints import compile_patterns, discover, model_dir
    from rollserve.eval.completeness import COMPLETE, weights_state

    found = discover(options.checkpoint_dir, compile_patterns(options.patterns),
                     exclude=[options.output_dir])
    loadable = [c for c in found if weights_state(c.path)[0] == COMPLETE]
    return model_dir(loadable[0].path) if loadable else None


def _print_checkpoint(console, checkpoint, rows: List[dict]) -> None:
    from rich.markup import escape

    from rollserve.eval.console import shown_metrics, with_stderr
    from rollserve.eval.report import OK, STATUS_LABELS

    parts = [f"{row['task']}/{k}={with_stderr(row['metrics'], k)}" for row in rows
             if row["status"] == OK for k in shown_metrics(row["metrics"])]
    errors = {}  # (cause, error) -> tasks (a failed load fails every task with one error)
    for row in rows:
        if row["status"] != OK:
            errors.setdefault((STATUS_LABELS.get(row["status"], row["status"]), row["error"]),
                              []).append(row["task"])
    parts += [f"[red]{','.join(tasks)} {cause}: {escape(str(error))}[/red]"
              for (cause, error), tasks in errors.items()]
    console.print(f"{checkpoint.name} (step {checkpoint.step}): " + "  ".join(parts),
                  markup=True, highlight=False)


# ---- entry point ------------------------------------------------------------------------------
def run_eval(ns) -> int:
    from rollserve.core.logging_setup import configure_logging

    configure_logging("warning", prefix="eval")
    logging.getLogger("rollserve.eval").setLevel(logging.INFO)
    from rollserve.rollout.errors import RolloutError

    try:
        return cmd_run(ns) if ns.eval_command == "run" else cmd_watch(ns)
    except InvalidRequest as e:
        logger.error("%s", e)
        return 2
    except RolloutError as e:  # the server refused a request, or none answered
        logger.error("the server failed the evaluation: %s", e)
        return 1
