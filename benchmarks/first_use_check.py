"""What Encoder's first-use check costs: per tower and precision, the quick check beside loading the session.

    python benchmarks/first_use_check.py onnx/AltCLIP-m18 --precision fp32,int8 --threads 2

The check runs once per variant, provider, onnxruntime build and CPU/GPU (then it is recorded and costs
nothing); this times it afresh each round, interleaved with the other variants, and prints medians with the
CPU they were measured on. Needs only the runtime install.
"""

from __future__ import annotations

import argparse
import statistics
import time

from altclip_onnx import Encoder, read_manifest
from altclip_onnx.bundle import TOWERS
from altclip_onnx.precisions import parse_precisions
from altclip_onnx.verification.check import check_precision
from altclip_onnx.verification.reference import read_reference
from altclip_onnx.verification.selfcheck import cpu_identity, runtime_identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--precision", default="fp32,int8")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    started = time.perf_counter()
    reference = read_reference(args.bundle, manifest)
    read_seconds = time.perf_counter() - started
    precisions = parse_precisions(args.precision)
    load: dict[tuple[str, str], list[float]] = {}
    check: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for precision in precisions:
            encoder = Encoder(args.bundle, provider=args.provider, precision=precision, threads=args.threads,
                              self_check=False)
            for tower in TOWERS:
                started = time.perf_counter()
                session = encoder.session(tower)
                load.setdefault((tower, precision), []).append(time.perf_counter() - started)
                started = time.perf_counter()
                _, failures, _, _ = check_precision(reference, precision, lambda _tower: session,
                                                    logit_scale=manifest.logit_scale, towers=(tower,), quick=True,
                                                    pad_id=manifest.text.pad_id)
                check.setdefault((tower, precision), []).append(time.perf_counter() - started)
                if failures:
                    print(f"note: {tower} {precision} failed its check here: {failures[0]}")
            del encoder
    cpu = cpu_identity()
    print(f"CPU: {cpu['model'] or cpu['machine']} ({', '.join(cpu['features'])}); {runtime_identity()}; "
          f"threads {args.threads or 'default'}; medians of {args.repeats} interleaved rounds\n")
    print(f"reading the reference: {read_seconds:.2f} s (once per process that checks)\n")
    print("| tower | precision | load the session (s) | first-use check (s) | check / load |")
    print("|---|---|---:|---:|---:|")
    for (tower, precision), seconds in check.items():
        loaded, checked = statistics.median(load[(tower, precision)]), statistics.median(seconds)
        print(f"| {tower} | {precision} | {loaded:.2f} | {checked:.2f} | {checked / loaded:.2f} |")


if __name__ == "__main__":
    main()
