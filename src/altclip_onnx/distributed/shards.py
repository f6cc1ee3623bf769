"""The output of a distributed run: a folder of Parquet shards, written one whole shard at a time.

``OUT/`` (any name; ``OUT.parquet`` reads well) holds

- ``part-000000.parquet``, ``part-000001.parquet``, ...: shard ``i`` holds inputs ``i*S .. (i+1)*S - 1`` in
  input order (``S``: ``shard_rows``). Images: columns ``path``, ``embedding`` (fixed-size list of float32,
  null where the file failed) and ``error`` (null where it did not). Texts: ``text`` and ``embedding``. Each
  shard is written to a temp name and renamed when complete, so a shard file is either whole or absent.
- ``_altclip.json``: the run's settings (model, precision, normalize, draft), the number of inputs, ``S``, a
  digest of the inputs in order, and ``complete`` once every shard is there.
- ``_lock``: held (``flock``) by the run writing the folder.

Read the whole folder with ``pyarrow.parquet.read_table(OUT)``, ``pandas.read_parquet(OUT)`` or any Parquet
dataset reader (names starting with ``_`` are skipped by convention); :func:`read_shards` gives rows in input
order. A rerun with the same inputs and settings skips every shard already there; other inputs or settings
are refused (``overwrite`` starts over).

Only pyarrow, numpy and the standard library here (no Ray).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import InputError, OutputError
from ..files import atomic_path, ensure_writable_folder, lock_file, write_json
from ..runtime.outputs import parquet_modules, parquet_string

log = logging.getLogger(__name__)

PLAN_FILE = "_altclip.json"
LOCK_FILE = "_lock"
PLAN_FORMAT = 1


def pyarrow() -> tuple[Any, Any]:
    return parquet_modules("writing Parquet shards", "distributed")


def shard_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def inputs_digest(items: Sequence[str]) -> str:
    """sha256 over the inputs in order (each as JSON, one per line): which run a folder belongs to."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item).encode() + b"\n")
    return digest.hexdigest()


@dataclass
class ShardFolder:
    """The output folder of one run: which shards exist, writing the others, the lock and the plan."""

    folder: Path
    kind: str  # "image" or "text"
    meta: dict[str, Any]
    rows: int
    shard_rows: int
    digest: str
    dim: int

    @property
    def column(self) -> str:
        return "path" if self.kind == "image" else "text"

    @property
    def shards(self) -> int:
        return -(-self.rows // self.shard_rows)

    def shard_range(self, index: int) -> tuple[int, int]:
        start = index * self.shard_rows
        return start, min(start + self.shard_rows, self.rows)

    # --- opening ------------------------------------------------------------------------------

    def open(self, *, overwrite: bool) -> list[int]:
        """Lock the folder (created if needed) and return the shards still to do; refuses a folder of
        another run, or anything else, unless ``overwrite``."""
        pyarrow()
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"{self.folder}: exists and is not a folder; a distributed run writes a folder of "
                              "Parquet shards: choose another -o")
        if self.folder.suffix.lower() == ".npy":
            raise InputError(f"{self.folder}: a distributed run writes Parquet shards into a folder; name it "
                             "OUT.parquet (or any name without .npy)")
        ensure_writable_folder(self.folder)
        self._lock = lock_file(self.folder / LOCK_FILE, str(self.folder))
        try:
            plan_path = self.folder / PLAN_FILE
            others = [p for p in self.folder.iterdir() if p.name not in (LOCK_FILE, PLAN_FILE)]
            if overwrite:
                for path in others + ([plan_path] if plan_path.exists() else []):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            elif plan_path.exists():
                self._check_plan(plan_path)
            elif [p for p in others if not p.name.startswith(".")]:
                raise OutputError(f"{self.folder}: not empty and not the output of a run; pass --overwrite to "
                                  "replace it or choose another -o")
            for stale in self.folder.glob(".*.part"):  # temp files of shards that were being written
                stale.unlink()
            write_json(plan_path, self._plan(complete=False))
            return [i for i in range(self.shards) if not self.finished(i)]
        except BaseException:
            self.close()
            raise

    def _plan(self, complete: bool) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "kind": self.kind, "meta": self.meta, "rows": self.rows,
                "shard_rows": self.shard_rows, "inputs_sha256": self.digest, "dim": self.dim,
                "complete": complete}

    def _check_plan(self, path: Path) -> None:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if not isinstance(stored, dict) or stored.get("format") != PLAN_FORMAT:
            raise OutputError(f"{path}: unreadable or of another version; pass --overwrite to start over")
        mine = json.loads(json.dumps(self._plan(complete=False)))
        differs = [key for key in ("kind", "rows", "inputs_sha256", "shard_rows") if stored.get(key) != mine[key]]
        differs += sorted(k for k in mine["meta"] if (stored.get("meta") or {}).get(k) != mine["meta"][k])
        if differs:
            what = "inputs" if {"rows", "inputs_sha256"} & set(differs) else ", ".join(differs)
            raise OutputError(f"{self.folder}: holds a run with other {what}; rerun with the same inputs and "
                              "options to continue it, or pass --overwrite to start over")

    def finished(self, index: int) -> bool:
        """Whether shard ``index`` is in the folder, whole."""
        path = self.folder / shard_name(index)
        if not path.is_file():
            return False
        start, stop = self.shard_range(index)
        try:
            rows = pyarrow()[1].ParquetFile(path).metadata.num_rows
        except Exception as exc:  # a damaged shard is redone
            log.warning("%s: unreadable (%s); it will be redone", path, exc)
            return False
        if rows != stop - start:
            log.warning("%s: %d rows, not %d; it will be redone", path, rows, stop - start)
            return False
        return True

    # --- writing ------------------------------------------------------------------------------

    def write(self, index: int, items: Sequence[str], embeddings: np.ndarray, errors: Sequence[str | None]) -> None:
        """Shard ``index``: rows in input order; ``embeddings`` [n, D] (rows of failed inputs are ignored)."""
        pa, pq = pyarrow()
        start, stop = self.shard_range(index)
        if len(items) != stop - start:
            raise RuntimeError(f"shard {index}: {len(items)} rows, expected {stop - start}")  # a bug, not input
        ok = np.array([error is None for error in errors], dtype=bool)
        flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1))
        embedding = pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=pa.array(~ok))
        names = [parquet_string(item) for item in items]
        columns = [pa.array(names, pa.string()), embedding]
        fields = [(self.column, pa.string()), ("embedding", pa.list_(pa.float32(), self.dim))]
        if self.kind == "image":
            columns.append(pa.array(list(errors), pa.string()))
            fields.append(("error", pa.string()))
        schema = pa.schema(fields, metadata={"altclip_onnx": json.dumps(self.meta)})
        target = self.folder / shard_name(index)
        with atomic_path(target) as tmp:
            pq.write_table(pa.Table.from_arrays(columns, schema=schema), tmp)

    def finish(self) -> None:
        write_json(self.folder / PLAN_FILE, self._plan(complete=True))

    def close(self) -> None:
        lock: IO[str] | None = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None


def read_shards(folder: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, list[str | None]]:
    """(paths or texts, float32 [N, D] with NaN rows where an input failed, errors) of a finished run, in
    input order."""
    pa, pq = pyarrow()
    folder = Path(folder)
    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        raise InputError(f"{folder}: no shards (part-*.parquet) here")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    column = "path" if "path" in table.column_names else "text"
    items = table.column(column).to_pylist()
    errors = table.column("error").to_pylist() if "error" in table.column_names else [None] * len(items)
    embedding = table.column("embedding").combine_chunks()
    dim = embedding.type.list_size
    values = embedding.values.slice(embedding.offset * dim, len(embedding) * dim)  # null rows keep their slots
    rows = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(items), dim).copy()
    rows[np.asarray(embedding.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
    return items, rows, errors

