#!/usr/bin/env bash
# Set up .venv with the export extra, then export a model (default: $MODEL, else AltCLIP-m18, to onnx/<name>)
# and verify it against PyTorch. Arguments go to `altclip-onnx export`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[export]'
exec .venv/bin/altclip-onnx export "$@"
