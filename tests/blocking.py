"""Python source that a fresh interpreter runs first to make the export side unimportable: torch,
transformers, sentencepiece and onnx behave as if they were not installed. Every test that runs code
without the export side prepends it to what it runs (tests/core/test_torch_free.py, the CLI's index and
search, embed, image preprocessing, retrieval evaluation, the service); no test blocks those packages any
other way. tests/core/test_seams.py reads the import statements (BLOCKED among them) instead."""

BLOCKED = ("torch", "transformers", "sentencepiece", "onnx")

BLOCK_EXPORT_SIDE = r"""
import sys

BLOCKED = ("torch", "transformers", "sentencepiece", "onnx")


class Block:
    # Any import of a blocked package or submodule fails, as if it were not installed.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked for this test: {name}", name=name)
        return None


sys.meta_path.insert(0, Block())
# A None entry is how Python marks "not importable": `import torch` raises ModuleNotFoundError and
# importlib.util.find_spec("torch") returns None, exactly as without the package. (The finder alone
# would make find_spec raise instead, which no real environment does.)
for name in BLOCKED:
    sys.modules[name] = None
"""
