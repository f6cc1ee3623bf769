"""Per-row int8 (the bundle's: batch-independent) against onnxruntime's per-tensor dynamic int8, on the same
graph, and where per-row's time goes.

    python benchmarks/int8_rows.py m18 --random-init --threads 2 --work-dir /tmp/int8-rows

Per tower, from the graph the bundle's int8 starts from (:data:`altclip_onnx.export.variants.RECIPES`), makes
the per-row variant exactly as export does (``quantize_int8``) and onnxruntime's per-tensor one
(``quantize_dynamic_int8``); times both interleaved (batch 1 and 8 images, 1 and 32 texts of 16 tokens),
and with ``--openvino`` the per-row graph on OpenVINO's own runtime too (what ``tune`` may choose instead);
then runs the per-row graph under onnxruntime's profiler and sums its node times by operator, with the
integer GEMMs' achieved rate (2 x multiply-adds / their time) beside the rate the same kernel reaches on one
large GEMM alone (the practical peak on this CPU and thread count). Graphs are kept in ``--work-dir`` and
reused. Needs the [export] extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

BATCHES = {"visual": (1, 8), "textual": (1, 32)}
GEMM = "MatMulIntegerToFloat"
QUANTIZING = ("Abs", "ReduceMax", "Max", "Div", "QuantizeLinear")  # the per-row activation chain
PER_ROW_OPENVINO = "per-row on OpenVINO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="model name or checkpoint folder (as for altclip-onnx export)")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--towers", default="visual,textual")
    parser.add_argument("--openvino", action="store_true",
                        help="also time the per-row graph on OpenVINO's runtime (the [openvino] extra)")
    parser.add_argument("--work-dir", type=Path, help="keep (and reuse) the graphs here [default: a temp folder]")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()

    from altclip_onnx.runtime import bench

    say = lambda message: print(f"... {message}", file=sys.stderr, flush=True)  # noqa: E731
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="altclip-int8-rows-"))
    graphs = build_graphs(args, work, say)
    report: dict = {"machine": bench.machine_facts(args.threads), "towers": {}}
    for tower, (per_row, per_tensor) in graphs.items():
        speeds = time_both(tower, per_row, per_tensor, args, say)
        profile = profile_per_row(tower, per_row, args.threads, say)
        report["towers"][tower] = {"speeds": speeds, "profile": profile}
    report["peak"] = gemm_peak(args.threads, say)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


def build_graphs(args: argparse.Namespace, work: Path, say) -> dict[str, tuple[Path, Path]]:  # type: ignore[no-untyped-def]
    """Per tower: (per-row int8, per-tensor int8), both from the start graph of the bundle's int8."""
    from altclip_onnx.export import graphs as graph_files
    from altclip_onnx.export import towers
    from altclip_onnx.export.optimize import optimize_graph
    from altclip_onnx.export.quantize import quantize_dynamic_int8, quantize_int8
    from altclip_onnx.export.variants import RAW, start_graph

    built, model = {}, None
    for tower in args.towers.split(","):
        per_row, per_tensor = work / tower / "per-row" / "model.onnx", work / tower / "per-tensor" / "model.onnx"
        if per_row.is_file() and per_tensor.is_file():
            built[tower] = (per_row, per_tensor)
            continue
        if model is None:
            from altclip_onnx.export.sources import load_model, resolve_source

            say("loading the model")
            model = load_model(resolve_source(args.source, random_init=args.random_init)).model
        say(f"exporting the plain {tower} graph")
        raw = towers.export_tower(model, tower, work / tower / "raw" / "model.onnx")[0]
        start = start_graph("int8", tower, optimize=True)
        if start != RAW:
            config = model.config.vision_config if tower == "visual" else model.config.text_config
            say(f"fusing the {tower} graph as export does before int8")
            raw = graph_files.isolated(optimize_graph, raw, work / tower / "start" / "model.onnx", tower,
                                       num_heads=int(config.num_attention_heads),
                                       hidden_size=int(config.hidden_size), recipe=start)[0]
        say(f"per-row and per-tensor int8 of the {tower} graph")
        graph_files.isolated(quantize_int8, raw, per_row)
        graph_files.isolated(quantize_dynamic_int8, raw, per_tensor)
        built[tower] = (per_row, per_tensor)
    return built


def time_both(tower: str, per_row: Path, per_tensor: Path, args: argparse.Namespace, say) -> dict:  # type: ignore[no-untyped-def]
    from altclip_onnx.bundle import TOWER_INPUTS
    from altclip_onnx.runtime import bench
    from altclip_onnx.runtime.providers import make_session

    runners = {}
    candidates = [("per-row", per_row, "cpu"), ("per-tensor", per_tensor, "cpu")]
    if args.openvino:
        candidates.append((PER_ROW_OPENVINO, per_row, "openvino-runtime"))
    for name, path, provider in candidates:
        session = make_session(path, provider=provider, threads=args.threads, spinning=False)
        runners[name] = lambda inputs, s=session, n=TOWER_INPUTS[tower]: s.run(None, {k: inputs[k] for k in n})
    speeds: dict = {}
    for batch in BATCHES[tower]:
        say(f"timing the {tower} tower at batch {batch}")
        inputs = bench.make_inputs(tower, batch)
        medians = bench.interleaved_medians({n: (lambda r=r: r(inputs)) for n, r in runners.items()},
                                            repeats=args.repeats)
        speeds[batch] = {name: batch / seconds for name, seconds in medians.items()}
    return speeds


def profile_per_row(tower: str, path: Path, threads: int, say) -> dict:  # type: ignore[no-untyped-def]
    """Node time by operator at the larger batch (onnxruntime's profiler, 5 runs after one warm-up)."""
    import onnxruntime

    from altclip_onnx.bundle import TOWER_INPUTS
    from altclip_onnx.runtime import bench
    from altclip_onnx.runtime.providers import session_options

    batch = BATCHES[tower][-1]
    say(f"profiling the per-row {tower} graph at batch {batch}")
    options = session_options(threads, spinning=False)
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "profile")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {k: v for k, v in bench.make_inputs(tower, batch).items() if k in TOWER_INPUTS[tower]}
    session.run(None, inputs)
    runs = 5
    for _ in range(runs):
        session.run(None, inputs)
    events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    after_warm_up = starts[1] if len(starts) > 1 else 0
    seconds: dict[str, float] = defaultdict(float)
    multiply_adds = 0
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < after_warm_up:
            continue
        op = event["args"]["op_name"]
        seconds[op] += event["dur"] / 1e6
        if op == GEMM:
            # the weight is prepacked, so not among the inputs: K from A, N from the output
            a = next(iter(event["args"]["input_type_shape"][0].values()))
            out = next(iter(event["args"]["output_type_shape"][0].values()))
            multiply_adds += int(np.prod(out[:-1])) * a[-1] * out[-1]
    total = sum(seconds.values())
    return {"batch": batch, "seconds_per_run": total / runs,
            "share": {op: s / total for op, s in sorted(seconds.items(), key=lambda kv: -kv[1])},
            "gemm_tops": 2 * multiply_adds / seconds[GEMM] / 1e12 if seconds[GEMM] else None}


def gemm_peak(threads: int, say) -> float:  # type: ignore[no-untyped-def]
    """TOPS of one large MatMulIntegerToFloat alone (uint8 x int8, 1024 x 4096 x 4096): the practical peak
    of the integer GEMM kernel on this CPU at this thread count."""
    from onnx import TensorProto, helper, numpy_helper

    from altclip_onnx.runtime import bench
    from altclip_onnx.runtime.providers import make_session

    say("timing one large integer GEMM for the practical peak")
    m, k, n = 1024, 4096, 4096
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-64, 64, (k, n), dtype=np.int8), "w")
    scalars = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
               numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    node = helper.make_node(GEMM, ["a", "w", "one", "one", "zp"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight, *scalars])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = Path(tempfile.mkdtemp()) / "gemm.onnx"
    path.write_bytes(model.SerializeToString())
    session = make_session(path, provider="cpu", threads=threads, spinning=False)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    seconds = bench.interleaved_medians({"gemm": lambda: session.run(None, {"a": a})}, repeats=5)["gemm"]
    return 2 * m * k * n / seconds / 1e12


def format_report(report: dict) -> str:
    from altclip_onnx.runtime import bench

    openvino = any(PER_ROW_OPENVINO in speeds for data in report["towers"].values() for speeds in data["speeds"].values())
    extra = (f" {PER_ROW_OPENVINO} (items/s) | {PER_ROW_OPENVINO} / per-tensor |", "---|---|") if openvino else ("", "")
    lines = [f"Machine: {bench.machine_line(report['machine'])}", "",
             f"| tower | batch | per-row (items/s) | per-tensor (items/s) | per-row / per-tensor |{extra[0]}",
             f"|---|---|---|---|---|{extra[1]}"]
    for tower, data in report["towers"].items():
        for batch, speeds in data["speeds"].items():
            row = (f"| {tower} | {batch} | {speeds['per-row']:.2f} | {speeds['per-tensor']:.2f} | "
                   f"{speeds['per-row'] / speeds['per-tensor']:.2f}x |")
            if openvino:
                row += f" {speeds[PER_ROW_OPENVINO]:.2f} | {speeds[PER_ROW_OPENVINO] / speeds['per-tensor']:.2f}x |"
            lines.append(row)
    lines += ["", f"Integer GEMM practical peak (1024 x 4096 x 4096 alone): {report['peak']:.3f} TOPS", ""]
    for tower, data in report["towers"].items():
        profile = data["profile"]
        shares = profile["share"]
        chain = sum(shares.get(op, 0.0) for op in QUANTIZING)
        top = ", ".join(f"{op} {share:.1%}" for op, share in list(shares.items())[:8])
        tops = profile["gemm_tops"]
        lines.append(f"- {tower}, per-row, batch {profile['batch']}: {profile['seconds_per_run'] * 1000:.0f} ms a run; "
                     f"integer GEMMs {shares.get(GEMM, 0):.1%} of node time at {tops:.3f} TOPS "
                     f"({tops / report['peak']:.0%} of the practical peak); the row-quantizing chain "
                     f"({', '.join(QUANTIZING)}) {chain:.1%}; by operator: {top}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
