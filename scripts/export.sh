#!/usr/bin/env bash
# Set up .venv with the export extra, then export a model (default: $MODEL, else AltCLIP-m18, to onnx/<name>)
# and verify it against PyTorch. Arguments go to `altclip-onnx export`.
set -euo pipefail
EXTRAS=export source "$(dirname "$0")/venv.sh"
exec .venv/bin/altclip-onnx export "$@"
