"""Embedding on Ray (distributed/ and embed --ray) against the single-process run, on a real Ray cluster on
loopback (conftest.py) and with --ray auto (a local Ray started by the command itself).

The first test needs no cluster and runs before the cluster fixture starts one, so --ray auto starts its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from altclip_onnx.distributed import RayOptions, embed_images, read_shards
from altclip_onnx.distributed.ray_run import SHIPPED_CACHE, _translate, connect, run
from altclip_onnx.distributed.shards import ShardFolder, shard_name
from altclip_onnx.errors import AltclipOnnxError, BundleError, Interrupted
from altclip_onnx.runtime import Encoder
from altclip_onnx.runtime.outputs import EmbedOptions, embed_images_to_file, embed_texts_to_file, read_embeddings

from .conftest import RayCluster, ray_env

TEXTS = ["a photo of a cat", "一只猫的照片", "eine Katze", "un chat", "a rocket launching", "咖啡"]


@pytest.fixture
def photos(tmp_path: Path, fixture_photos: list[Path]) -> Path:
    """The fixture photos in a folder and a sub-folder, plus a file that is not an image."""
    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    for i, photo in enumerate(fixture_photos):
        shutil.copy(photo, (root if i % 2 else root / "more") / photo.name)
    (root / "more" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def cli(*args: object, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "altclip_onnx.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ray_env())


def single_process(bundle: Path, inputs: list[Path], out: Path) -> tuple[list[str], np.ndarray]:
    from altclip_onnx.runtime.pipeline import iter_image_files

    encoder = Encoder(bundle, provider="cpu", precision="fp32")
    embed_images_to_file(encoder, iter_image_files(inputs), out, EmbedOptions(progress=False))
    return read_embeddings(out)


def assert_equal_to_single_process(folder: Path, expected: tuple[list[str], np.ndarray]) -> list[str | None]:
    """Same rows in the same order (failed files are extra rows with an error), cosine >= 0.99999 at fp32."""
    items, rows, errors = read_shards(folder)
    ok = [error is None for error in errors]
    assert [item for item, good in zip(items, ok) if good] == expected[0]
    got = rows[np.array(ok)]
    cosine = (got * expected[1]).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected[1], axis=1)
    assert cosine.min() >= 0.99999
    return errors


# ------------------------------------------------------------------------------------- --ray auto


def test_embed_with_ray_auto_starts_a_local_ray_and_equals_the_single_process_run(
        tmp_path: Path, photos: Path, tiny_bundle: Path) -> None:
    out = tmp_path / "out.parquet"
    done = cli("embed", tiny_bundle, photos, "-o", out, "--ray", "auto", "--precision", "fp32", "--shard-rows", "2")
    assert done.returncode == 4, done.stderr  # done, but one file failed
    broken = photos / "more" / "broken.jpg"
    assert f"failed: {broken}: not an image file" in done.stderr
    assert "embedded 5 images, 1 failed" in done.stdout and "in 3 shards" in done.stdout
    errors = assert_equal_to_single_process(out, single_process(tiny_bundle, [photos], tmp_path / "single.parquet"))
    assert sum(e is not None for e in errors) == 1
    assert json.loads((out / "_altclip.json").read_text())["complete"] is True


# ------------------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def ray_here(ray_cluster: RayCluster):  # type: ignore[no-untyped-def]
    """This test process connected to the cluster as a driver (the Python API), disconnected afterwards."""
    ray = connect(ray_cluster.address)
    yield ray
    ray.shutdown()


def test_embed_on_the_cluster_equals_the_single_process_run(tmp_path: Path, photos: Path, tiny_bundle: Path,
                                                            ray_cluster: RayCluster) -> None:
    out = tmp_path / "out.parquet"
    missing = tmp_path / "gone.jpg"
    done = cli("embed", tiny_bundle, photos, missing, "-o", out, "--ray", ray_cluster.address, "--actors", "2",
               "--threads", "1", "--workers", "1", "--precision", "fp32", "--batch-size", "2", "--shard-rows", "3")
    assert done.returncode == 4, done.stderr
    assert f"failed: {missing}: no such file" in done.stderr and "on 2 Ray actors" in done.stdout
    expected = single_process(tiny_bundle, [photos, missing], tmp_path / "single.parquet")
    errors = assert_equal_to_single_process(out, expected)
    assert errors[-1] == "no such file" and sorted(p.name for p in out.glob("part-*")) == [
        shard_name(0), shard_name(1), shard_name(2)]  # 7 inputs, 3 per shard
    # Run again: every shard is there, nothing is embedded (and no cluster is needed for that).
    again = cli("embed", tiny_bundle, photos, missing, "-o", out, "--ray", ray_cluster.address, "--precision", "fp32",
                "--shard-rows", "3")
    assert again.returncode == 0 and "embedded 0 images" in again.stdout and "3 resumed" in again.stdout
    other = cli("embed", tiny_bundle, photos, "-o", out, "--ray", ray_cluster.address, "--precision", "fp32",
                "--shard-rows", "3")
    assert other.returncode == 1 and "holds a run with other inputs" in other.stderr


def test_embed_text_on_the_cluster_equals_the_single_process_run(tmp_path: Path, tiny_bundle: Path,
                                                                 ray_cluster: RayCluster) -> None:
    out = tmp_path / "texts.parquet"
    done = cli("embed-text", tiny_bundle, *TEXTS, "-o", out, "--ray", ray_cluster.address, "--precision", "fp32",
               "--shard-rows", "4")
    assert done.returncode == 0, done.stderr
    items, rows, errors = read_shards(out)
    encoder = Encoder(tiny_bundle, provider="cpu", precision="fp32")
    embed_texts_to_file(encoder, TEXTS, tmp_path / "single.parquet", EmbedOptions(progress=False))
    texts, expected = read_embeddings(tmp_path / "single.parquet")
    assert items == texts == TEXTS and errors == [None] * len(TEXTS)
    assert ((rows * expected).sum(1) / np.linalg.norm(rows, axis=1) / np.linalg.norm(expected, axis=1)).min() >= 0.99999


def test_an_interrupted_run_resumes_without_redoing_finished_shards(
        tmp_path: Path, photos: Path, tiny_bundle: Path, ray_here, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.parquet"
    options = RayOptions(precision="fp32", shard_rows=2, actors=2, progress=False)
    real = ShardFolder.write
    written: list[int] = []

    def interrupted(self, index, *args):  # type: ignore[no-untyped-def]
        if written:
            raise KeyboardInterrupt  # Ctrl-C after the first shard was written
        written.append(index)
        return real(self, index, *args)

    monkeypatch.setattr(ShardFolder, "write", interrupted)
    with pytest.raises(Interrupted, match=r"1 of 3 shards are finished .* rerun the same command"):
        embed_images(photos, tiny_bundle, out, options)
    monkeypatch.undo()
    first = out / shard_name(written[0])
    kept = first.stat().st_mtime_ns
    report = embed_images(photos, tiny_bundle, out, options)
    assert (report.shards, report.resumed, report.embedded + len(report.failures)) == (3, 1, 4)
    assert first.stat().st_mtime_ns == kept  # not rewritten
    assert_equal_to_single_process(out, single_process(tiny_bundle, [photos], tmp_path / "single.parquet"))


def test_a_ray_dataset_of_paths_and_a_shipped_bundle(tmp_path: Path, photos: Path, tiny_bundle: Path,
                                                     ray_here) -> None:
    """The bundle reaches the workers through the object store: only the files the run needs, once per node."""
    cache = Path(tempfile.gettempdir()) / SHIPPED_CACHE
    for old in cache.glob("*-visual-fp32"):
        shutil.rmtree(old)
    paths = sorted(str(p) for p in photos.rglob("*.*"))
    dataset = ray_here.data.from_items([{"path": p} for p in paths])
    out = tmp_path / "shipped.parquet"
    report = embed_images(dataset, tiny_bundle, out, RayOptions(precision="fp32", ship_bundle=True, progress=False))
    assert report.rows == len(paths) and len(report.failures) == 1
    (shipped,) = cache.glob("*-visual-fp32")
    files = sorted(str(p.relative_to(shipped)) for p in shipped.rglob("[!.]*") if p.is_file())
    # The reference goes too: each worker's Encoder checks its variant against it on first use.
    assert files == ["manifest.json", "reference/arrays.npz", "reference/cases.json", "textual/tokenizer.json",
                     "visual/model.onnx", "visual/preprocessor_config.json"]
    items, rows, errors = read_shards(out)
    assert items == paths
    expected = single_process(tiny_bundle, [Path(p) for p in paths], tmp_path / "single.parquet")
    assert_equal_to_single_process(out, expected)


def test_errors_from_inside_ray_are_one_line(tmp_path: Path, tiny_bundle: Path) -> None:
    class RayTaskError(Exception):  # how Ray wraps an actor's exception: the original is .cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__("ray.exceptions.RayTaskError(BundleError): long\ntraceback")
            self.cause = cause

    wrapped = RayTaskError(BundleError("/models/m18/manifest.json: missing"))
    message = str(_translate(wrapped, "/models/m18", RayOptions()))
    assert message.startswith("a Ray worker cannot use the bundle: /models/m18/manifest.json: missing; put the "
                              "bundle on a path every node can read, or pass --ship-bundle")
    other = _translate(RuntimeError("boom\nmore"), "/models/m18", RayOptions())
    assert isinstance(other, AltclipOnnxError) and "\n" not in str(other)


def test_ray_options_without_ray_are_a_usage_error(tmp_path: Path, tiny_bundle: Path) -> None:
    from click.testing import CliRunner

    from altclip_onnx.cli import main

    result = CliRunner().invoke(main, ["embed", str(tiny_bundle), str(tmp_path), "-o", str(tmp_path / "o.npy"),
                                       "--actors", "2"])
    assert result.exit_code == 2 and "--actors only apply with --ray" in result.output
    with pytest.raises(AltclipOnnxError, match="no images to embed"):
        run("image", [], tiny_bundle, tmp_path / "o.parquet", RayOptions())


def test_uris_are_kept_in_order_and_read_through_pyarrow(tmp_path: Path, photos: Path, tiny_bundle: Path) -> None:
    from altclip_onnx.distributed import expand_inputs
    from altclip_onnx.distributed.ray_run import _Embedder

    uri = (photos / "more" / "astronaut.jpg").as_uri()  # file:///...: any scheme pyarrow knows (s3://, gs://, ...)
    items = expand_inputs([photos / "more", "s3://bucket/a.jpg", uri])
    assert items[-2:] == ["s3://bucket/a.jpg", uri] and items[0].endswith("astronaut.jpg")
    actor = _Embedder("image", str(tiny_bundle), None, "fp32", "cpu", 1, 1, 2, False, True)
    pyarrow = pytest.importorskip("pyarrow")
    batch = pyarrow.table({"shard": [0, 0, 0], "row": [0, 1, 2],
                           "item": [uri, str(photos / "more" / "astronaut.jpg"), uri + ".missing"]})
    out = actor(batch)
    rows = np.asarray(out.column("embedding").combine_chunks().values).reshape(3, -1)
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-6)  # the same bytes, by URI and by path
    assert out.column("error").to_pylist()[:2] == [None, None] and "cannot read it" in out.column("error")[2].as_py()


def test_a_ray_address_where_nothing_listens_is_one_line_in_seconds(tmp_path: Path, photos: Path,
                                                                     tiny_bundle: Path) -> None:
    from .conftest import free_port

    done = cli("embed", tiny_bundle, photos, "-o", tmp_path / "out.parquet", "--ray", f"127.0.0.1:{free_port()}",
               timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --ray 127.0.0.1:") and "nothing answers there" in lines[0]
    assert "ray start --head" in lines[0]
