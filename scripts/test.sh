#!/usr/bin/env bash
# Set up .venv with the export, parquet and test extras, then run the whole test suite.
# torch is pinned (==2.13.0) in the [export] extra: on the project's machines pip takes its CPU build from disk.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[export,parquet,test]'
exec .venv/bin/python -m pytest "$@"
