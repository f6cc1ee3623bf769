"""``python -m altclip_onnx.cli``: the same as the ``altclip-onnx`` command."""

from . import main

main(prog_name="altclip-onnx")
