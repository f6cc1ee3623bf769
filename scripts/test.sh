#!/usr/bin/env bash
# Run the whole test suite, setting up what it needs. Extra arguments go to pytest (e.g. -k search -x).
#
# 1. .venv (export side and everything): build the test fixture once (tiny checkpoints, a tiny bundle and
#    the PyTorch/transformers reference; python -m tests.fixture), then run every test against it.
# 2. .venv-runtime (the runtime half and the test tools only: no torch, transformers, onnx or
#    sentencepiece, as runtime users have it): run tests/runtime again against the same fixture.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=export,parquet,search,bench,test VENV=.venv source scripts/venv.sh
EXTRAS=parquet,search,test VENV=.venv-runtime source scripts/venv.sh

fixture=build/test-fixture
rm -rf "$fixture"
echo "building the test fixture in $fixture"
.venv/bin/python -m tests.fixture "$fixture" >/dev/null

echo "== all tests (.venv: export and runtime)"
ALTCLIP_TEST_FIXTURE="$fixture" .venv/bin/python -m pytest "$@"

echo "== runtime tests without torch, transformers, onnx or sentencepiece (.venv-runtime)"
status=0
ALTCLIP_TEST_FIXTURE="$fixture" ALTCLIP_RUNTIME_ONLY=1 .venv-runtime/bin/python -m pytest tests/runtime "$@" || status=$?
# 5: the arguments selected no runtime test (e.g. -k export), which is fine here.
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
