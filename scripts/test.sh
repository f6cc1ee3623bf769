#!/usr/bin/env bash
# Set up .venv with the export, parquet and test extras, then run the whole test suite.
set -euo pipefail
EXTRAS=export,parquet,test source "$(dirname "$0")/venv.sh"
exec .venv/bin/python -m pytest "$@"
