"""What tests/openvino runs in .venv-openvino, where onnxruntime-openvino replaces onnxruntime.

A standalone script: ``python jobs.py {encode,run} SPEC.json OUT.json``. It imports only the runtime (altclip_onnx,
onnxruntime, numpy), never the test package, which is not installed in that venv.

``encode``: ``Encoder(spec["bundle"], provider="openvino", precision=spec["precision"])`` embeds
``spec["texts"]`` and ``spec["images"]`` (paths) with its first-use check on, as a user runs it. onnxruntime
profiles the Encoder's own sessions, so OUT.json says, per tower, which provider ran each node: onnxruntime
hands OpenVINO the subgraphs it claims and runs the rest on its CPU provider without a word, and
``session.get_providers()`` lists OpenVINO either way.

``run``: one ONNX model on a provider, arrays in and out as .npz files (the integer GEMM probe).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

SUBGRAPH = "OpenVINO-EP-subgraph"  # how a profile names the nodes OpenVINO compiled (one per claimed subgraph)


def profile_sessions(folder: Path) -> None:
    """Every session made from now on writes an onnxruntime profile into ``folder``."""
    from altclip_onnx.runtime import providers

    plain = providers.session_options

    def profiled(*args: Any, **kwargs: Any) -> Any:
        options = plain(*args, **kwargs)
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / "profile")
        return options

    providers.session_options = profiled  # make_session looks it up when it runs


def placement(profile: str) -> dict[str, dict[str, int]]:
    """provider -> op type -> nodes, from a profile (OpenVINO's subgraphs counted under one name)."""
    nodes = {}
    for event in json.loads(Path(profile).read_text(encoding="utf-8")):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            args = event["args"]
            op = SUBGRAPH if args["op_name"].startswith(SUBGRAPH) else args["op_name"]
            nodes[event["name"]] = (args["provider"], op)
    counts: dict[str, Counter] = {}
    for provider, op in nodes.values():
        counts.setdefault(provider, Counter())[op] += 1
    return {provider: dict(ops) for provider, ops in counts.items()}


def encode(spec: dict, folder: Path) -> dict[str, Any]:
    profile_sessions(folder)
    from altclip_onnx import Encoder

    encoder = Encoder(spec["bundle"], provider="openvino", precision=spec["precision"])
    out: dict[str, Any] = {"texts": encoder.encode_texts(spec["texts"]).tolist(),
                           "images": encoder.encode_images(spec["images"]).tolist(), "towers": {}}
    for tower in ("visual", "textual"):
        session = encoder.session(tower)
        out["towers"][tower] = {"providers": session.get_providers(), "nodes": placement(session.end_profiling())}
    return out


def run(spec: dict, folder: Path) -> dict[str, Any]:
    """``spec["model"]`` on ``spec["provider"]``, loaded by the runtime's make_session as Encoder loads a tower,
    fed the arrays of ``spec["inputs"]`` (.npz); its outputs go to ``spec["outputs"]`` (.npz, in order)."""
    import numpy as np

    from altclip_onnx.runtime.providers import make_session

    session = make_session(spec["model"], provider=spec["provider"])
    with np.load(spec["inputs"]) as feed:
        outputs = session.run(None, dict(feed))
    np.savez(spec["outputs"], *outputs)
    return {"providers": session.get_providers()}


JOBS = {"encode": encode, "run": run}


def main(job: str, spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = JOBS[job](spec, Path(out_path).parent)
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in JOBS:
        sys.exit(f"usage: python jobs.py {{{','.join(JOBS)}}} SPEC.json OUT.json")
    main(*sys.argv[1:])
