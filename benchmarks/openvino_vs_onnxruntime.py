"""Should OpenVINO be a runtime backend? The bundle's own graphs in OpenVINO's runtime against onnxruntime.

    python benchmarks/openvino_vs_onnxruntime.py BUNDLE --threads 2 -o bench-out/openvino

Per tower and precision (fp32 and int8 by default), the same graph file is compiled by OpenVINO (CPU,
``INFERENCE_PRECISION_HINT`` f32 so that bf16-capable CPUs do not silently compute fp32 graphs in bf16,
``INFERENCE_NUM_THREADS`` as onnxruntime's threads) and loaded by onnxruntime as the runtime loads it; both
are timed interleaved on the same inputs (latency at batch 1, throughput at batch 8 and 32), and the cosine
between their outputs is reported. Needs the [openvino] extra. Writes ``results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per batch size and tower, at most")
    parser.add_argument("-o", "--output", type=Path, default=Path("bench-out/openvino"))
    args = parser.parse_args()

    import openvino

    from altclip_onnx.bundle import TOWER_INPUTS, TOWER_OUTPUTS, read_manifest
    from altclip_onnx.export.verify import cosine_rows
    from altclip_onnx.runtime import bench
    from altclip_onnx.runtime.providers import make_session

    say = lambda message: print(f"... {message}", file=sys.stderr, flush=True)  # noqa: E731
    manifest = read_manifest(args.bundle)
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    core = openvino.Core()
    candidates, agreement = [], {}
    for tower, variants in manifest.towers.items():
        for precision in args.precisions.split(","):
            if precision not in variants:
                continue
            path = args.bundle / variants[precision].path
            output = TOWER_OUTPUTS[tower][0]
            session = make_session(path, provider="cpu", threads=args.threads, spinning=False)
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads})
            names = TOWER_INPUTS[tower]

            def ort_run(inputs, s=session, n=names, o=output):  # type: ignore[no-untyped-def]
                return s.run([o], {k: inputs[k] for k in n})[0]

            def ov_run(inputs, c=compiled, n=names, o=output):  # type: ignore[no-untyped-def]
                return c({k: inputs[k] for k in n})[c.output(o)]

            size = sum((args.bundle / f).stat().st_size for f in variants[precision].files)
            candidates += [bench.Candidate(f"onnxruntime {precision}", tower, ort_run, size_bytes=size),
                           bench.Candidate(f"openvino {precision}", tower, ov_run, size_bytes=size)]
            inputs = bench.make_inputs(tower, 8, tokens=args.tokens, seed=7)
            a, b = ort_run(inputs), ov_run(inputs)
            cos = cosine_rows(a, b)
            agreement[f"{tower}/{precision}"] = float(cos.min())
            say(f"{tower} {precision}: openvino vs onnxruntime min cosine {cos.min():.6f}")
    results = bench.measure(candidates, batch_sizes=batch_sizes, tokens=args.tokens, repeats=args.repeats,
                            budget_s=args.budget, progress=say)
    facts = bench.machine_facts(args.threads)
    facts["openvino"] = openvino.__version__
    header = f"Machine: {bench.machine_line(facts)}, openvino {facts['openvino']}; text {args.tokens} tokens.\n\n"
    table = bench.format_markdown(results, batch_sizes=batch_sizes)
    lines = ["| graph | openvino vs onnxruntime, min cosine (8 inputs) |", "|---|---|"]
    lines += [f"| {k} | {v:.6f} |" for k, v in agreement.items()]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.md").write_text(header + table + "\n" + "\n".join(lines) + "\n")
    (args.output / "results.json").write_text(json.dumps({
        "machine": facts, "settings": {**vars(args), "bundle": str(args.bundle), "output": str(args.output)},
        "results": [dataclasses.asdict(r) for r in results], "agreement": agreement}, indent=2, default=str))
    print(header + table + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
