"""Full speed comparison from one model: PyTorch eager vs plain export vs our optimized variants.

    python benchmarks/compare.py m18 --random-init --threads 2 -o bench-out/
    python benchmarks/compare.py path/to/checkpoint --threads 2 -o bench-out/

Per tower, in one run on the same inputs: PyTorch eager (fp32), a plain unoptimized export (what
the seed project produced), its plain dynamic int8 (``quantize_dynamic``, MatMul only, no fusion),
our optimized fp32, our int8, and fp16 where a GPU provider exists; with ``--tuned-bundle B`` also what
``precision auto`` runs after ``altclip-onnx tune B`` on this machine (B exported from the same model, e.g.
``altclip-onnx export m18 --random-init``, and tuned first). The ONNX variants are timed
interleaved; PyTorch is timed first, alone (sharing the process with the sessions slowed it 4x).
Latency at batch 1 (median of interleaved runs after warm-up), throughput at batch 8 and 32, peak RSS of a fresh process that
loads one variant and embeds a batch of 8, and file size. Writes ``results.md``, ``results.json``
and ``results.png`` to the output folder. Needs the [export] extra and matplotlib for the chart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="model name or checkpoint folder (as for altclip-onnx export)")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="threads for PyTorch and onnxruntime alike")
    parser.add_argument("--tokens", type=int, default=16, help="text length in tokens")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds at batch 1")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--towers", default="visual,textual")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per batch size and tower, at most")
    parser.add_argument("--work-dir", type=Path, help="keep the exported graphs here (default: a temp folder)")
    parser.add_argument("--explore", action="store_true",
                        help="also time onnxruntime's per-tensor dynamic int8 of the fully fused graph (QAttention)")
    parser.add_argument("--tuned-bundle", type=Path,
                        help="a bundle of the same model, tuned here: adds the row of what precision auto runs")
    parser.add_argument("-o", "--output", type=Path, default=Path("bench-out"))
    args = parser.parse_args()

    import onnxruntime
    import torch

    from altclip_onnx.bundle import TOWER_INPUTS, VISUAL
    from altclip_onnx.export import graphs, towers
    from altclip_onnx.export.quantize import quantize_dynamic_int8
    from altclip_onnx.export.sources import load_model, resolve_source
    from altclip_onnx.export.variants import make_variants
    from altclip_onnx.runtime import bench
    from altclip_onnx.runtime.providers import make_session

    torch.set_num_threads(args.threads)
    if args.tuned_bundle:
        tuned_candidates(args.tuned_bundle, wanted_towers(args), args.threads, load=False)  # fails now, not in 20 min
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    wanted = wanted_towers(args)
    say = lambda message: print(f"... {message}", file=sys.stderr, flush=True)  # noqa: E731

    say("loading the model")
    loaded = load_model(resolve_source(args.source, random_init=args.random_init))
    model = loaded.model
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="altclip-bench-"))
    candidates: list[bench.Candidate] = []
    gpu = any(p in onnxruntime.get_available_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))

    # PyTorch first, timed alone: interleaved with many onnxruntime sessions in one process its image tower
    # ran 4x slower at batch 1 (3.0 s against 0.79 s alone), which would flatter every ONNX variant.
    torch_candidates = []
    for tower in wanted:
        module = towers.tower_module(model, tower)

        def torch_run(inputs, module=module, names=TOWER_INPUTS[tower]):  # type: ignore[no-untyped-def]
            with torch.inference_mode():
                return module(*(torch.from_numpy(inputs[n]) for n in names))

        torch_candidates.append(bench.Candidate("pytorch eager", tower, torch_run,
                                                size_bytes=sum(p.numel() * p.element_size() for p in module.parameters())))
    results = bench.measure(torch_candidates, batch_sizes=batch_sizes, tokens=args.tokens, repeats=args.repeats,
                            budget_s=args.budget, progress=say)

    for tower in wanted:
        config = model.config.vision_config if tower == VISUAL else model.config.text_config
        shape = {"num_heads": int(config.num_attention_heads), "hidden_size": int(config.hidden_size)}
        say(f"exporting the plain {tower} graph")
        plain = towers.export_tower(model, tower, work / tower / "plain" / "model.onnx")[0]
        say(f"plain dynamic int8 of the {tower} tower")
        plain_int8 = quantize_dynamic_int8(plain, work / tower / "plain" / "model.int8.onnx")[0]
        # Exactly what the export writes (export.variants.RECIPES), from the same plain graph.
        ours = make_variants([plain, *plain.parent.glob("model.onnx.data")], tower,
                             ("fp32", "int8", *(("fp16",) if gpu else ())), work / tower / "ours",
                             work / tower / "ours-work", **shape, progress=say)
        variants = {"plain export fp32": plain, "plain dynamic int8": plain_int8, "ours fp32": ours["fp32"][0],
                  "ours int8": ours["int8"][0]}
        if args.explore:
            variants["dynamic int8 of the fully fused graph"] = quantize_dynamic_int8(
                ours["fp32"][0], work / tower / "fused" / "model.int8.onnx", op_types=("MatMul", "Attention"))[0]
        if gpu:
            variants["ours fp16"] = ours["fp16"][0]
        for name, path in variants.items():
            # No spinning: the sessions take turns in this process and must not steal each other's cores.
            session = make_session(path, provider="cuda" if name.endswith("fp16") else "cpu", threads=args.threads,
                                   spinning=False)
            candidates.append(bench.Candidate(
                name, tower,
                lambda inputs, s=session, n=TOWER_INPUTS[tower]: s.run(None, {k: inputs[k] for k in n}),
                size_bytes=graphs.graph_weight_bytes(path),
                rss_command=bench.rss_command(path, tower, args.threads),
            ))

    if args.tuned_bundle:
        candidates += tuned_candidates(args.tuned_bundle, wanted, args.threads)
    results += bench.measure(candidates, batch_sizes=batch_sizes, tokens=args.tokens, repeats=args.repeats,
                             budget_s=args.budget, progress=say)
    results.sort(key=lambda r: wanted.index(r.tower))  # PyTorch first within each tower
    candidates = torch_candidates + candidates
    accuracy = accuracy_vs_pytorch(candidates, args.tokens)
    facts = bench.machine_facts(args.threads)
    facts["torch"] = torch.__version__
    args.output.mkdir(parents=True, exist_ok=True)
    table = bench.format_markdown(results, baseline="pytorch eager", batch_sizes=batch_sizes)
    acc_lines = ["| tower | variant | cosine to PyTorch (min over 8 inputs) |", "|---|---|---|"]
    acc_lines += [f"| {t} | {n} | {c:.5f} |" for (t, n), c in accuracy.items()]
    header = f"Machine: {bench.machine_line(facts)}, torch {facts['torch']}; text {args.tokens} tokens.\n\n"
    (args.output / "results.md").write_text(header + table + "\n" + "\n".join(acc_lines) + "\n")
    settings = {**vars(args), "output": str(args.output), "work_dir": str(work), "source": args.source}
    (args.output / "results.json").write_text(json.dumps({
        "machine": facts, "settings": settings, "results": [dataclasses.asdict(r) for r in results],
        "accuracy": {f"{t}/{n}": c for (t, n), c in accuracy.items()}}, indent=2, default=str))
    chart(results, args.output / "results.png")
    print(header + table + "\n" + "\n".join(acc_lines))


def wanted_towers(args: argparse.Namespace) -> list[str]:
    return args.towers.split(",")


def tuned_candidates(bundle: Path, towers: list[str], threads: int, load: bool = True):  # type: ignore[no-untyped-def]
    """What ``Encoder(bundle)`` runs per tower after ``tune``: the profile's provider and precision (with
    ``load=False``, only check that there is a profile)."""
    from altclip_onnx import Encoder
    from altclip_onnx.bundle import TOWER_INPUTS
    from altclip_onnx.runtime import bench

    encoder = Encoder(bundle, threads=threads, spinning=False)
    missing = [tower for tower in towers if tower not in encoder.tuned]
    if missing:
        sys.exit(f"{bundle}: no tune profile for this machine; run 'altclip-onnx tune {bundle} --threads {threads}' first")
    candidates = []
    if not load:
        return candidates
    for tower in towers:
        session = encoder.session(tower)
        variant = encoder.manifest.towers[tower][encoder.precisions[tower]]
        name = f"tuned: {encoder.precisions[tower]} on {encoder.provider_of(tower).removesuffix('ExecutionProvider')}"
        candidates.append(bench.Candidate(
            name, tower, lambda inputs, s=session, n=TOWER_INPUTS[tower]: s.run(None, {k: inputs[k] for k in n}),
            size_bytes=sum(encoder.manifest.files[f].size for f in variant.files)))
    return candidates


def accuracy_vs_pytorch(candidates, tokens):  # type: ignore[no-untyped-def]
    """Min cosine of each candidate's embeddings to PyTorch eager's, on 8 random inputs per tower."""
    from altclip_onnx.runtime import bench

    scores = {}
    for tower in {c.tower for c in candidates}:
        inputs = bench.make_inputs(tower, 8, tokens=tokens, seed=123)
        ref = None
        for c in (c for c in candidates if c.tower == tower):
            out = c.run(inputs)[0]
            out = out.numpy() if hasattr(out, "numpy") else out
            if ref is None:
                ref = out
            cos = np.sum(out * ref, axis=1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
            scores[(tower, c.name)] = float(cos.min())
    return scores


def chart(results, path: Path) -> None:  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return
    towers = sorted({r.tower for r in results}, reverse=True)
    fig, axes = plt.subplots(1, len(towers), figsize=(6 * len(towers), 4))
    axes = np.atleast_1d(axes)
    for ax, tower in zip(axes, towers):
        rows = [r for r in results if r.tower == tower]
        ax.barh([r.name for r in rows], [r.latency_ms for r in rows], color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel("batch-1 latency (ms, lower is better)")
        ax.set_title(f"{tower} tower")
        for i, r in enumerate(rows):
            ax.text(r.latency_ms, i, f" {r.latency_ms:.0f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
