"""The watcher swaps the weights of the server it is given, so it must own that server:
pointed at a trainer's rollout server, it would replace the policy under the trainer.

A server is the watcher's when
* it is fresh, as one started by --launch is: weight_version "default" (never updated)
  and no token prefilled or generated yet, or
* it carries a weight_version this watcher set: the versions are STEP@eval-TOKEN, with a
  TOKEN kept in OUTPUT_DIR/server_claim.json, so a restarted watcher takes its own
  server back.
Anything else is refused unless --allow-shared-server. During scoring, the
weight_version of every response is recorded; one that differs from the version loaded
for the checkpoint means something else changed the weights (a `mismatch` row).
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from typing import List, Optional

from rollserve.eval.report import MISMATCH

CLAIM_FILE = "server_claim.json"
FRESH_VERSION = "default"


class SharedServerError(RuntimeError):
    """The server serves someone else (refused at start, or seen mid-run)."""


class ServerGuard:
    def __init__(self, client, output_dir: str, *, allow_shared: bool = False):
        self.client = client
        self.allow_shared = allow_shared
        self.token = self._token(output_dir)

    @staticmethod
    def _token(output_dir: str) -> str:
        path = os.path.join(output_dir, CLAIM_FILE)
        try:
            with open(path) as f:
                return json.load(f)["token"]
        except (OSError, ValueError, KeyError):
            token = uuid.uuid4().hex[:8]
            os.makedirs(output_dir, exist_ok=True)
            with open(path, "w") as f:
                json.dump({"token": token}, f)
            return token

    def version_for(self, step: int) -> str:
        return f"{step}@eval-{self.token}"

    def is_ours(self, version: Optional[str]) -> bool:
        return isinstance(version, str) and version.endswith(f"@eval-{self.token}")

    def check_server(self) -> None:
        """Raises SharedServerError when a replica is neither fresh, ours nor allowed."""
        if self.allow_shared:
            return
        for url in self.client.urls:
            info = self._server_info(url)
            version = info.get("weight_version")
            served = int(info.get("prompt_tokens_total") or 0) + int(info.get("generation_tokens_total") or 0)
            if self.is_ours(version):
                continue
            if version == FRESH_VERSION and served == 0:
                continue
            why = (f"it carries weight_version {version!r}, which this watcher did not set"
                   if version != FRESH_VERSION else f"it has already served {served:,} tokens")
            raise SharedServerError(
                f"refusing to load checkpoints into {url}: {why}, so it may be another "
                "program's server (a trainer's rollout server would have its policy replaced). "
                "Use --launch, a server started for the watcher, or --allow-shared-server if "
                "nothing else depends on its weights")

    def _server_info(self, url: str) -> dict:
        # through the client's call: retries, and a RolloutError naming the call when no
        # replica answers (a raw httpx error would end the watcher with a traceback)
        return self.client._call("/get_server_info", None, url=url, method="GET")

    def judge(self, expected: str, seen: Counter) -> Optional[str]:
        """None when every response carried `expected`, else the mismatch as an error
        message (also when no response reported a version)."""
        versions = sorted(v for v in seen if v != expected)
        if not versions:
            return None
        message = (f"{MISMATCH}: the server reported weight_version {versions} on "
                   f"{sum(seen[v] for v in versions)} of {sum(seen.values())} responses, not "
                   f"{expected!r} loaded for this checkpoint; something else changed its weights")
        return message

    @staticmethod
    def reported(seen: Counter) -> Optional[str]:
        """What the rows record as the weight_version the server reported."""
        versions: List[str] = sorted(str(v) for v in seen)
        return ",".join(versions) if versions else None
