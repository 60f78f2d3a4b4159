"""Which (checkpoint, task) pairs still need an attempt, from the rows recorded so far.

The latest row of a pair decides (results.jsonl is append-only, so this survives kills):

  ok             final: scored once, never again
  failed         the server refused the checkpoint (broken): retried only when the
  task_failed    folder's files change (the row records their digest); likewise a task
                 whose requests the server refused
  not_scorable   a sharded training layout: looked at again when the folder changes
  incomplete     an incomplete write (a file cut short, or a load error that reads like
  mismatch       one), or another party changed the server's weights mid-task: retried
                 when the folder changes, else after a back-off of poll_interval * 2^k
                 (k = attempts on the same files), at most MAX_ATTEMPTS times
"""

from __future__ import annotations

import datetime
import re
from typing import Dict, Iterable, Optional, Tuple

from rollserve.eval.report import (FAILED, INCOMPLETE, MISMATCH, NOT_SCORABLE, OK, TASK_FAILED,
                                   latest_rows)

MAX_ATTEMPTS = 4
MAX_BACKOFF_S = 3600.0
# What a loader says when a file is shorter than it should be, or is missing mid-write
# (safetensors, torch zip, JSON, the OS).
INCOMPLETE_ERRORS = re.compile(
    r"incomplete|truncat|cut short|unexpected end|end of (file|data|stream)|\bEOF\b|"
    r"not fully covered|header ?too ?large|invalid header|MetadataIncompleteBuffer|"
    r"central directory|not a zip file|No such file|does not exist|Expecting value|"
    r"Unterminated string|JSONDecodeError|unexpected EOF", re.IGNORECASE)


def looks_incomplete(error: Optional[str]) -> bool:
    """Whether a load error reads like a file that was still being written."""
    return bool(error) and bool(INCOMPLETE_ERRORS.search(error))


def _seconds_since(row: dict, now: datetime.datetime) -> float:
    try:
        when = datetime.datetime.fromisoformat(row["time"])
    except (KeyError, TypeError, ValueError):
        return float("inf")
    return (now - when).total_seconds()


class Attempts:
    """Built from the rows of results.jsonl; `due(name, task, files)` says whether to
    (re)try the pair now, given the digest of the folder's files."""

    def __init__(self, rows: Iterable[dict], poll_interval: float):
        rows = list(rows)
        self.latest: Dict[Tuple[str, str], dict] = latest_rows(rows)
        self.poll_interval = poll_interval
        self.tries: Dict[Tuple[str, str, str], int] = {}
        for row in rows:
            if row.get("status") in (INCOMPLETE, MISMATCH):
                key = (row["checkpoint"], row["task"], row.get("files") or "")
                self.tries[key] = self.tries.get(key, 0) + 1

    def finished(self, name: str, task: str) -> bool:
        """Scored: nothing will change that (no need to look at the folder again)."""
        row = self.latest.get((name, task))
        return row is not None and row.get("status") == OK

    def due(self, name: str, task: str, files: str,
            now: Optional[datetime.datetime] = None) -> bool:
        row = self.latest.get((name, task))
        if row is None:
            return True
        status = row.get("status")
        if status == OK:
            return False
        changed = (row.get("files") or "") != files
        if status in (FAILED, TASK_FAILED, NOT_SCORABLE):
            return changed
        if status in (INCOMPLETE, MISMATCH):
            if changed:
                return True
            tries = self.tries.get((name, task, files), 0)
            if tries >= MAX_ATTEMPTS:
                return False
            wait = min(self.poll_interval * 2 ** tries, MAX_BACKOFF_S)
            now = now or datetime.datetime.now(datetime.timezone.utc)
            return _seconds_since(row, now) >= wait
        return True  # an unknown status (a newer writer): look again

    def recorded_state(self, name: str, task: str) -> Optional[dict]:
        return self.latest.get((name, task))
