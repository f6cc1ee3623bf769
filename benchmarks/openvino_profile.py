"""Where OpenVINO's runtime spends a tower's time, by layer type, from its own counters (``PERF_COUNT``).

    python benchmarks/openvino_profile.py BUNDLE --precision int8 --threads 2 --peak-tops 12.1

The bundle's graph for each tower is compiled as ``provider="openvino-runtime"`` compiles it (f32 precision
hint, latency hint, ``--threads``), run ``--repeats`` times at batch 1 (an image, or a text of ``--tokens``
tokens), and each layer's real time is summed by OpenVINO's layer type (with the kernel it chose) over the median
run. The int8 GEMMs (``FullyConnected``) are held against their multiply-adds: the graph's int8 weights times
the rows they multiply (a text's tokens; an image's patch tokens, but the last layer's class token alone), so
``--peak-tops`` (``benchmarks/machine_peaks.c`` on the same machine) gives the share of the machine's int8 peak.
Needs the [openvino] and [bench] extras.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--peak-tops", type=float, help="the machine's int8 peak, from machine_peaks.c")
    parser.add_argument("--precision", default="int8", help="the variant to profile [default: int8]")
    parser.add_argument("--threads", type=int, default=2, help="OpenVINO's inference threads [default: 2]")
    parser.add_argument("--tokens", type=int, default=16, help="the text's length [default: 16]")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs after two warm-up runs [default: 20]")
    args = parser.parse_args()

    import openvino

    from altclip_onnx.bundle import TOWERS, read_manifest
    from altclip_onnx.runtime import bench
    from altclip_onnx.verification.selfcheck import cpu_identity

    manifest = read_manifest(args.bundle)
    cpu = cpu_identity()
    print(f"CPU: {cpu['model'] or cpu['machine']} ({', '.join(cpu['features'])}); openvino "
          f"{openvino.__version__}; {args.threads} threads; batch 1; median of {args.repeats} runs\n")
    for tower in TOWERS:
        path = args.bundle / manifest.towers[tower][args.precision].files[0]
        core = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES",
                  "INFERENCE_NUM_THREADS": args.threads}
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        feed = bench.make_inputs(tower, 1, image_size=manifest.image.size, tokens=args.tokens)
        request = compiled.create_infer_request()
        runs = []
        for _ in range(args.repeats + 2):  # two warm-up runs
            # a port's names include the graph input's own (its "any name" may be an internal tensor's)
            request.infer({port: feed[name] for port in compiled.inputs for name in port.get_names() if name in feed})
            runs.append([(info.node_type, info.exec_type, info.real_time.total_seconds())
                         for info in request.profiling_info])
        runs = runs[2:]
        totals = [sum(seconds for _, _, seconds in run) for run in runs]
        median = runs[totals.index(sorted(totals)[len(totals) // 2])]
        by_type: dict[tuple[str, str], float] = defaultdict(float)
        for node_type, exec_type, seconds in median:
            by_type[(node_type, exec_type)] += seconds
        total = sum(by_type.values())
        print(f"**{tower}** ({path.name}): node time {total * 1e3:.1f} ms (median run)\n")
        print("| layer type | kernel | ms | share |")
        print("|---|---|---:|---:|")
        for (node_type, exec_type), seconds in sorted(by_type.items(), key=lambda item: -item[1])[:8]:
            print(f"| {node_type} | {exec_type} | {seconds * 1e3:.1f} | {seconds / total:.0%} |")
        gemm_seconds = sum(s for (node_type, _), s in by_type.items() if node_type == "FullyConnected")
        macs = multiply_adds(path, feed, args.threads)
        if gemm_seconds and macs:
            tops = 2 * macs / gemm_seconds / 1e12
            share = f", {tops / args.peak_tops:.0%} of the {args.peak_tops} TOPS peak" if args.peak_tops else ""
            print(f"\nint8 GEMMs (FullyConnected): {gemm_seconds * 1e3:.1f} ms for {macs / 1e9:.2f} G multiply-adds:"
                  f" {tops:.2f} TOPS{share}\n")
        print(f"(whole runs: median {statistics.median(totals) * 1e3:.1f} ms of node time)\n")


def multiply_adds(path: Path, feed: dict[str, np.ndarray], threads: int) -> float:
    """The integer GEMMs' multiply-adds for ``feed``, from the shapes onnxruntime's profiler records for each
    MatMulIntegerToFloat it runs (rows x K of the activations, times N of the output)."""
    import json
    import tempfile

    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    total = 0.0
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and args.get("op_name") == "MatMulIntegerToFloat" and \
                event["name"].endswith("_kernel_time"):
            # the weight is prepacked, so not among the shapes: K from the activations, N from the output
            (a,), (y,) = args["input_type_shape"][0].values(), args["output_type_shape"][0].values()
            total += float(np.prod(a[:-1])) * a[-1] * y[-1]
    return total


if __name__ == "__main__":
    main()
