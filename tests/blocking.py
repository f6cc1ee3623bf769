"""Python source that a fresh interpreter runs first to make the export side unimportable: torch,
transformers, sentencepiece and onnx behave as if they were not installed. The runtime-only tests
(tests/core/test_torch_free.py, the service's in tests/serve) prepend it to what they run."""

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
