"""distributed/shards.py alone (no Ray): the shard folder's plan, resume, refusals and reading back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from altclip_onnx.distributed import read_shards
from altclip_onnx.distributed.shards import PLAN_FILE, ShardFolder, inputs_digest, shard_name
from altclip_onnx.errors import BusyError, InputError, OutputError

pq = pytest.importorskip("pyarrow.parquet")

META = {"kind": "image", "variant": "tiny", "precision": "fp32", "normalize": True, "draft": False}


def folder(path: Path, items: list[str], shard_rows: int = 2, meta: dict | None = None) -> ShardFolder:
    return ShardFolder(path, "image", meta or META, len(items), shard_rows, inputs_digest(items), 4)


def write_all(out: ShardFolder, items: list[str], shards: list[int]) -> None:
    for index in shards:
        start, stop = out.shard_range(index)
        rows = np.arange(start * 4, stop * 4, dtype=np.float32).reshape(-1, 4)
        errors = ["broken" if items[i].endswith("bad") else None for i in range(start, stop)]
        out.write(index, items[start:stop], rows, errors)


def test_shards_resume_and_read_back_in_input_order(tmp_path: Path) -> None:
    items = ["a", "b", "c.bad", "d", "e"]
    out = folder(tmp_path / "out.parquet", items)
    assert out.open(overwrite=False) == [0, 1, 2]
    write_all(out, items, [0, 2])  # shard 1 is lost, as if the run stopped there
    out.close()
    again = folder(tmp_path / "out.parquet", items)
    assert again.open(overwrite=False) == [1]
    write_all(again, items, [1])
    again.finish()
    again.close()
    names, rows, errors = read_shards(tmp_path / "out.parquet")
    assert names == items and errors == [None, None, "broken", None, None]
    assert np.isnan(rows[2]).all() and rows[4].tolist() == [16, 17, 18, 19]
    assert json.loads((tmp_path / "out.parquet" / PLAN_FILE).read_text())["complete"] is True
    table = pq.read_table(tmp_path / "out.parquet")  # the folder is a Parquet dataset as it is
    assert table.column_names == ["path", "embedding", "error"] and table.num_rows == 5
    assert json.loads(table.schema.metadata[b"altclip_onnx"])["variant"] == "tiny"


def test_a_damaged_or_short_shard_is_redone_and_temp_files_go(tmp_path: Path) -> None:
    items = ["a", "b", "c", "d"]
    out = folder(tmp_path / "out", items)
    out.open(overwrite=False)
    write_all(out, items, [0, 1])
    out.close()
    (tmp_path / "out" / shard_name(1)).write_bytes(b"PAR1 cut short")
    (tmp_path / "out" / ".part-000002.parquet.x.part").write_bytes(b"half")
    again = folder(tmp_path / "out", items)
    assert again.open(overwrite=False) == [1]
    assert not list((tmp_path / "out").glob(".*.part"))
    again.close()


def test_other_inputs_or_settings_other_folders_and_a_second_run_are_refused(tmp_path: Path) -> None:
    items = ["a", "b", "c"]
    out = folder(tmp_path / "out", items)
    out.open(overwrite=False)
    with pytest.raises(BusyError):
        folder(tmp_path / "out", items).open(overwrite=False)
    out.close()
    with pytest.raises(OutputError, match="holds a run with other inputs; rerun with the same inputs"):
        folder(tmp_path / "out", ["a", "b", "x"]).open(overwrite=False)
    with pytest.raises(OutputError, match="holds a run with other precision"):
        folder(tmp_path / "out", items, meta={**META, "precision": "int8"}).open(overwrite=False)
    fresh = folder(tmp_path / "out", ["x"], meta={**META, "precision": "int8"})
    assert fresh.open(overwrite=True) == [0]  # --overwrite starts over
    fresh.close()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty and not the output of a run"):
        folder(tmp_path / "busy", items).open(overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        folder(tmp_path / "file", items).open(overwrite=False)
    with pytest.raises(InputError, match="name it OUT.parquet"):
        folder(tmp_path / "x.npy", items).open(overwrite=False)
