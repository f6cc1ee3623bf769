#!/usr/bin/env bash
# Set up .venv with the export, parquet, search and test extras, then run the whole test suite.
set -euo pipefail
EXTRAS=export,parquet,search,test source "$(dirname "$0")/venv.sh"
exec .venv/bin/python -m pytest "$@"
