"""Texts of mixed lengths through Encoder.encode_texts on each runtime, batched as each runtime batches them.

    python benchmarks/text_lengths.py BUNDLE --precision int8 --threads 2

onnxruntime pads the texts of a batch to the longest (sorted by length first); OpenVINO's runtime batches only
texts of one length, never padded (see ``altclip_onnx.runtime.text.pads_texts``), which makes smaller batches
when lengths vary. ``tune`` times 32 texts of one length; this times what a collection of captions looks like:
``--texts`` texts of ``--min-words`` to ``--max-words`` random words (uniform), ``--batch-size`` at most per call,
the Encoder of each provider timed interleaved (medians of ``--repeats`` rounds, one warm-up). Needs the
[openvino] extra for OpenVINO's runtime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

WORDS = ("photo", "cat", "dog", "street", "night", "猫", "狗", "Katze", "Hund", "gato", "perro", "chat", "chien",
         "кошка", "собака", "red", "small", "old", "river", "mountain", "the", "a", "of", "in", "on")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--providers", default="cpu,openvino-runtime")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--min-words", type=int, default=3)
    parser.add_argument("--max-words", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from altclip_onnx import Encoder
    from altclip_onnx.runtime import bench
    from altclip_onnx.runtime.text import pads_texts

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(args.min_words, args.max_words + 1)))
             for _ in range(args.texts)]
    encoders = {}
    for provider in args.providers.split(","):
        print(f"... loading and checking the {args.precision} text tower on {provider}", file=sys.stderr, flush=True)
        encoders[provider] = Encoder(args.bundle, provider=provider, precision=args.precision, threads=args.threads,
                                     spinning=False)
        encoders[provider].session("textual")
    lengths = next(iter(encoders.values())).token_counts(texts)
    runners = {provider: (lambda e=encoder: e.encode_texts(texts, batch_size=args.batch_size))
               for provider, encoder in encoders.items()}
    print("... timing", file=sys.stderr, flush=True)
    medians = bench.interleaved_medians(runners, repeats=args.repeats)
    print(f"Machine: {bench.machine_line(bench.machine_facts(args.threads))}")
    print(f"{len(texts)} texts of {lengths.min()} to {lengths.max()} tokens ({len(np.unique(lengths))} distinct "
          f"lengths), at most {args.batch_size} a call, {args.precision}\n")
    print("| provider | batches texts | texts/s |\n|---|---|---:|")
    for provider, seconds in medians.items():
        how = "padded to the longest" if pads_texts(encoders[provider].session("textual")) else "by length, unpadded"
        print(f"| {provider} | {how} | {len(texts) / seconds:.1f} |")


if __name__ == "__main__":
    main()
