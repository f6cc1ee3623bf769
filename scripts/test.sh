#!/usr/bin/env bash
# Run the whole test suite, setting up what it needs. Extra arguments go to pytest (e.g. -k search -x).
#
# 0. System packages the service and client tests drive (Debian's chromium for the page, Node and npm for
#    transformers.js, qemu-user for tests/isa's emulated CPUs): installed with apt-get when missing and this
#    runs as root; otherwise those tests skip locally and fail under CI (CI=true), where a skip would hide a
#    missing install step.
# 1. .venv (export side and everything): build the test fixture once (tiny checkpoints, a tiny bundle and
#    the PyTorch/transformers reference; python -m tests.fixture), then run every test against it. The
#    tests start their own servers: the service on a loopback port, PostgreSQL from the pgserver wheel, a
#    Ray cluster on 127.0.0.1.
# 2. .venv-runtime (the runtime half and the test tools only: no torch, transformers, onnx or
#    sentencepiece, as runtime users have it): run again the tests of everything a user runs after export
#    (RUNTIME_TESTS below: the folders mirroring the runtime side of src/altclip_onnx).
# 3. .venv-openvino (the runtime half and the test tools, with onnxruntime-openvino in place of onnxruntime):
#    tests/openvino, run in step 1, drives it as subprocesses (verify and Encoder with --provider openvino).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium fonts-wqy-microhei)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v qemu-x86_64 >/dev/null || missing+=(qemu-user)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${missing[*]} with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "not installed: ${missing[*]} (the tests that need them are skipped)" >&2
    fi
fi

EXTRAS=export,convert,parquet,search,bench,serve,hub,openvino,distributed,postgres,docs,test,test-services VENV=.venv source scripts/venv.sh
EXTRAS=parquet,search,hub,test VENV=.venv-runtime source scripts/venv.sh
# onnxruntime-openvino installs the same `onnxruntime` module under another distribution name, so it cannot be
# an extra (pip would install both, one overwriting the other's files) and every `pip install -e .` puts
# onnxruntime back (the project requires that name). So it is swapped in after venv.sh, and the whole step runs
# again only when pyproject.toml changed since the last swap (a copy is kept in the venv). 1.24.1: tested here.
if ! cmp -s pyproject.toml .venv-openvino/pyproject.toml \
    || ! .venv-openvino/bin/python -m pip show -q onnxruntime-openvino 2>/dev/null; then
    EXTRAS=test VENV=.venv-openvino source scripts/venv.sh
    .venv-openvino/bin/python -m pip uninstall -q -y onnxruntime onnxruntime-openvino
    .venv-openvino/bin/python -m pip install -q "onnxruntime-openvino>=1.24.1"
    cp pyproject.toml .venv-openvino/pyproject.toml
fi

case "${CI:-}" in 1|true|yes) export ALTCLIP_REQUIRE_CLIENTS=1 ;; esac

fixture=build/test-fixture
rm -rf "$fixture"
echo "building the test fixture in $fixture"
.venv/bin/python -m tests.fixture "$fixture" >/dev/null

echo "== all tests (.venv: export, runtime, service, convert, distributed, postgres)"
ALTCLIP_TEST_FIXTURE="$fixture" .venv/bin/python -m pytest "$@"

# The test folders of the runtime side (tests mirror src/altclip_onnx; tests/core: bundle, files, errors, the
# public surface and the seams). tests/core/test_torch_free.py checks that every test folder is either listed
# here or named there with the extra it needs that .venv-runtime lacks.
RUNTIME_TESTS=(tests/core tests/runtime tests/search tests/fewshot tests/evaluation tests/verification tests/cli tests/hub)
echo "== runtime-side tests without torch, transformers, onnx or sentencepiece (.venv-runtime)"
status=0
ALTCLIP_TEST_FIXTURE="$fixture" ALTCLIP_RUNTIME_ONLY=1 .venv-runtime/bin/python -m pytest "${RUNTIME_TESTS[@]}" "$@" || status=$?
# 5: the arguments selected no runtime test (e.g. -k export), which is fine here.
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
