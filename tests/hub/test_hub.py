"""hf://OWNER/REPO bundles and push, with no Hub: huggingface_hub's own cache layout on disk, its offline mode,
and a closed local port where the Hub would be.

The cache is laid out as huggingface_hub lays it out (``models--OWNER--REPO/{refs/main, snapshots/<commit>/...
-> ../../blobs/<sha256>}``) and read by huggingface_hub itself; push goes through huggingface_hub's own
CommitOperationAdd/CommitOperationDelete, received by a stand-in for HfApi that writes each commit into that
same cache layout, so a pushed bundle is then loaded back by ``Encoder("hf://...")`` and the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altclip_onnx import BundleError, Encoder, InputError, IntegrityError, OutputError
from altclip_onnx.hub import HubReference, bundle_files, locate_bundle, parse_reference
from altclip_onnx.publish import plan_push, push_bundle

hub = pytest.importorskip("huggingface_hub")
hub_constants = pytest.importorskip("huggingface_hub.constants")

REPO = "someone/AltCLIP-tiny-onnx"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port on this machine: connection refused at once


def repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def publish(cache: Path, repo_id: str, files: dict[str, bytes], *, ref: str = "main") -> str:
    """Lay ``files`` out in huggingface_hub's cache as one commit of ``repo_id`` that ``ref`` points at."""
    commit = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode()).hexdigest()
    root = repo_folder(cache, repo_id)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return commit


def bundle_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != ".verified.json"}


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub pointed at an empty cache, offline, with the Hub's address a closed local port."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "ENDPOINT", UNREACHABLE)
    return cache


def cli_env(cache: Path, offline: bool = True) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_ENDPOINT=UNREACHABLE, HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def cli(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "altclip_onnx.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def fixture_photo_folder(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (64, 48), colour).save(folder / f"{i}.png")
    return folder


def test_references_parse() -> None:
    assert parse_reference("hf://BAAI/AltCLIP-m18-onnx") == HubReference("BAAI/AltCLIP-m18-onnx", None)
    assert parse_reference("hf://a/b@v1.0") == HubReference("a/b", "v1.0")
    assert str(parse_reference("hf://a/b@0123abc")) == "hf://a/b@0123abc"
    for bad in ("hf://", "hf://onlyname", "hf://a/b/c", "hf://a/b@", "hf://../b"):
        with pytest.raises(InputError, match="hf://OWNER/REPO"):
            parse_reference(bad)
    assert locate_bundle("some/folder") == Path("some/folder")


def test_encoder_runs_a_cached_bundle_offline(tiny_bundle: Path, offline_cache: Path) -> None:
    commit = publish(offline_cache, REPO, bundle_bytes(tiny_bundle))
    encoder = Encoder(f"hf://{REPO}", precision="fp32")
    assert encoder.bundle == repo_folder(offline_cache, REPO) / "snapshots" / commit
    local = Encoder(tiny_bundle, precision="fp32")
    np.testing.assert_array_equal(encoder.encode_texts(["一只猫", "a cat"]), local.encode_texts(["一只猫", "a cat"]))
    assert Encoder(f"hf://{REPO}@{commit}").bundle == encoder.bundle  # a pinned commit
    assert Encoder(f"hf://{REPO}@main").bundle == encoder.bundle


def test_every_command_takes_hf_references_offline(tiny_bundle: Path, tmp_path: Path) -> None:
    """What a user without torch runs: the CLI in a fresh process, HF_HUB_OFFLINE=1, the bundle in the cache."""
    cache = tmp_path / "cache"
    publish(cache, REPO, bundle_bytes(tiny_bundle))
    done = cli("embed-text", f"hf://{REPO}", "一只猫", "a cat", "-o", tmp_path / "texts", env=cli_env(cache))
    assert done.returncode == 0, done.stderr
    ours = Encoder(tiny_bundle).encode_texts(["一只猫", "a cat"])
    np.testing.assert_allclose(np.load(tmp_path / "texts.npy"), ours, atol=1e-6)
    done = cli("verify", f"hf://{REPO}", "--integrity", env=cli_env(cache))
    files = len(Encoder(tiny_bundle).manifest.files)
    assert done.returncode == 0 and f"all {files} files match the manifest" in done.stdout, done.stderr
    # An index made with the local bundle, searched with the Hub copy of it (--bundle hf://, no --precision).
    done = cli("index", tiny_bundle, fixture_photo_folder(tmp_path), "--db", tmp_path / "photos.idx", env=cli_env(cache))
    assert done.returncode == 0, done.stderr
    done = cli("search", "a cat", "--db", tmp_path / "photos.idx", "--bundle", f"hf://{REPO}", "--json", env=cli_env(cache))
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 2


def test_only_the_asked_precisions_are_needed(tiny_bundle: Path, offline_cache: Path) -> None:
    manifest = Encoder(tiny_bundle).manifest
    files = bundle_bytes(tiny_bundle)
    int8_only = {k: v for k, v in files.items() if not k.endswith(("model.onnx", "model.fp16.onnx"))}
    assert set(bundle_files(manifest, ["int8"])) == set(int8_only) - {"manifest.json", "verify.json"}
    publish(offline_cache, REPO, int8_only)
    folder = locate_bundle(f"hf://{REPO}", precisions=["int8"])
    assert Encoder(folder, precision="int8").encode_texts(["a cat"]).shape == (1, manifest.embedding_dim)
    with pytest.raises(BundleError, match=r"textual/model.fp16.onnx and 3 more not in the Hub cache and could not "
                                          r"be downloaded; on a machine with access run 'hf download"):
        locate_bundle(f"hf://{REPO}")  # all precisions: fp32 is not in the cache and the Hub is unreachable


def test_a_damaged_cached_file_is_refused(tiny_bundle: Path, offline_cache: Path) -> None:
    files = bundle_bytes(tiny_bundle)
    data = bytearray(files["textual/model.onnx"])
    data[len(data) // 2] ^= 0xFF
    files["textual/model.onnx"] = bytes(data)
    publish(offline_cache, REPO, files)
    with pytest.raises(IntegrityError) as info:
        Encoder(f"hf://{REPO}")
    message = str(info.value)
    assert "textual/model.onnx: sha256 differs from the manifest" in message
    assert "the copy in the Hub cache" in message and "hf cache delete" in message and "\n" not in message


HINT = ("on a machine with access run 'hf download someone/missing --revision v2 --local-dir missing', copy the "
        "folder here and pass its path as the bundle (or set HF_ENDPOINT to a mirror)")


def test_not_cached_and_offline_says_what_to_run_elsewhere(tmp_path: Path) -> None:
    done = cli("embed-text", "hf://someone/missing@v2", "a cat", "-o", tmp_path / "t", env=cli_env(tmp_path / "c"))
    assert done.returncode == 1
    assert done.stderr.startswith("error: hf://someone/missing@v2: could not download manifest.json from the Hugging "
                                  "Face Hub (")
    assert done.stderr.endswith(HINT + "\n") and done.stderr.count("\n") == 1


def test_hub_unreachable_says_what_to_run_elsewhere_at_once(offline_cache: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode with the Hub's address refusing connections: one line says why and what to run elsewhere,
    without huggingface_hub's retries (with their real backoff it took 24 s)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(BundleError) as info:
        locate_bundle("hf://someone/missing@v2")
    assert time.monotonic() - started < 3
    message = str(info.value)
    assert message.startswith("hf://someone/missing@v2: could not download manifest.json from the Hugging Face Hub "
                              "(ConnectError: ")
    assert message.endswith(HINT) and "\n" not in message


def test_a_cached_bundle_loads_with_the_hub_unreachable(tiny_bundle: Path, tmp_path: Path) -> None:
    """No HF_HUB_OFFLINE, no network: the cached bundle is used at once, with nothing on stderr."""
    cache = tmp_path / "cache"
    publish(cache, REPO, bundle_bytes(tiny_bundle))
    started = time.monotonic()
    done = cli("embed-text", f"hf://{REPO}", "a cat", "-o", tmp_path / "texts", env=cli_env(cache, offline=False))
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30 and done.stderr == ""


def test_huggingface_hub_warnings_print_once(tmp_path: Path) -> None:
    """A Hub answering 503 (a local stand-in): huggingface_hub retries and warns; each warning is one line."""
    import http.server
    import threading

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802
            self.send_response(503)
            self.end_headers()

        do_GET = do_HEAD  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(cli_env(tmp_path / "c", offline=False), HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
    script = ("import time; time.sleep = lambda seconds: None\n"  # the backoff, not what is printed
              "from altclip_onnx.cli import main\n"
              f"main(['embed-text', 'hf://{REPO}', 'a cat', '-o', {str(tmp_path / 't')!r}])\n")
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert done.returncode == 1
    assert done.stderr.count("Retrying in 1s [Retry 1/5]") == 1, done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"error: hf://{REPO}: could not download manifest.json")


def test_a_repository_that_is_not_a_bundle(offline_cache: Path) -> None:
    publish(offline_cache, REPO, {"README.md": b"# not a bundle\n", "manifest.json": b"{}"})
    with pytest.raises(BundleError, match=f"hf://{REPO}: not a usable altclip-onnx bundle: .*manifest.json: "
                                          "format_version '' is not a version number"):
        Encoder(f"hf://{REPO}")


# --- push -------------------------------------------------------------------------------------------


class CacheHub:
    """Stands in for HfApi: receives huggingface_hub's commit operations and writes each commit into the
    cache layout, as a download of that commit would leave it."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.repos: dict[str, dict[str, bytes]] = {}
        self.calls: list[tuple[str, Any]] = []

    def create_repo(self, repo_id: str, *, private: bool, exist_ok: bool, repo_type: str) -> str:
        self.calls.append(("create_repo", (repo_id, private, exist_ok, repo_type)))
        self.repos.setdefault(repo_id, {})
        return f"https://huggingface.co/{repo_id}"

    def list_repo_files(self, repo_id: str, *, revision: str | None, repo_type: str) -> list[str]:
        return sorted(self.repos[repo_id])

    def create_commit(self, repo_id: str, operations: list[Any], *, commit_message: str, revision: str | None,
                      repo_type: str) -> Any:
        self.calls.append(("create_commit", (repo_id, commit_message, revision)))
        files = dict(self.repos[repo_id])
        for op in operations:
            if isinstance(op, hub.CommitOperationDelete):
                files.pop(op.path_in_repo)
            else:
                assert isinstance(op, hub.CommitOperationAdd)
                source = op.path_or_fileobj
                files[op.path_in_repo] = Path(source).read_bytes() if isinstance(source, str) else bytes(source)
        self.repos[repo_id] = files
        commit = publish(self.cache, repo_id, files, ref=revision or "main")
        return hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{commit}", commit_message=commit_message,
                              commit_description="", oid=commit)


def test_push_uploads_the_checked_bundle_and_a_card_then_loads_back(tiny_bundle: Path, offline_cache: Path) -> None:
    plan = plan_push(tiny_bundle, REPO)
    names = [name for name, _ in plan.files]
    assert names[0] == "manifest.json" and "verify.json" in names and ".verified.json" not in names
    assert set(names) == {"manifest.json", "verify.json", *Encoder(tiny_bundle).manifest.files}
    fake = CacheHub(offline_cache)
    url = push_bundle(plan, api=fake)
    assert url.startswith(f"https://huggingface.co/{REPO}/commit/")
    assert fake.calls[0] == ("create_repo", (REPO, False, True, "model"))
    card = fake.repos[REPO]["README.md"].decode()
    assert card.startswith("---\nlibrary_name: altclip-onnx\n") and f'Encoder("hf://{REPO}")' in card
    for section in ("## Python", "## Command line", "## transformers.js", "## immich"):
        assert section in card
    assert f"altclip-onnx convert hf://{REPO} --to transformers.js" in card
    assert f"altclip-onnx convert hf://{REPO} --to immich" in card
    int8_min = Encoder(tiny_bundle).manifest.towers["visual"]["int8"].accuracy["min_cosine"]
    assert "| image | int8 | `visual/model.int8.onnx` |" in card and f"{int8_min:.5f}" in card  # the manifest's figures
    pushed = Encoder(f"hf://{REPO}", precision="fp32")
    np.testing.assert_array_equal(pushed.encode_texts(["Eine Katze"]), Encoder(tiny_bundle, precision="fp32").encode_texts(["Eine Katze"]))


def test_a_second_push_removes_variants_the_bundle_no_longer_has(tiny_bundle: Path, other_bundle: Path,
                                                                 offline_cache: Path) -> None:
    fake = CacheHub(offline_cache)
    push_bundle(plan_push(tiny_bundle, REPO), api=fake)
    fake.repos[REPO][".gitattributes"] = b"*.onnx filter=lfs\n"  # not the bundle's: kept
    push_bundle(plan_push(other_bundle, REPO), api=fake)
    assert not (other_bundle / "verify.json").exists()  # so the first bundle's report must go too
    assert set(fake.repos[REPO]) == {"manifest.json", "README.md", ".gitattributes", *Encoder(other_bundle).manifest.files}
    assert Encoder(f"hf://{REPO}").identity == Encoder(other_bundle).identity


def test_push_refuses_a_corrupt_bundle_before_any_network(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "textual" / "tokenizer.json").write_text("{}")
    with pytest.raises(IntegrityError, match="tokenizer.json: size"):
        plan_push(bundle, REPO)
    with pytest.raises(InputError, match="OWNER/REPO"):
        plan_push(tiny_bundle, "no-owner")


def test_push_dry_run_shows_files_and_card(tiny_bundle: Path, tmp_path: Path) -> None:
    done = cli("push", tiny_bundle, REPO, "--dry-run", env=cli_env(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    assert "README.md (model card, generated)" in done.stdout and "nothing was uploaded (--dry-run)" in done.stdout
    assert "# AltCLIP-tiny (ONNX, altclip-onnx bundle)" in done.stdout


def test_push_without_network_says_what_to_run_elsewhere(tiny_bundle: Path, offline_cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real HfApi, pointed at a closed local port (a token is given, so nothing looks for a login)."""
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)
    api = hub.HfApi(endpoint=UNREACHABLE, token="hf_test_token_not_real")
    with pytest.raises(OutputError) as info:
        push_bundle(plan_push(tiny_bundle, REPO), api=api)
    message = str(info.value)
    assert message.startswith(f"{REPO}: could not push to the Hugging Face Hub (") and "\n" not in message
    assert message.endswith(f"on a machine with access, copy the bundle there and run 'altclip-onnx push BUNDLE {REPO}'")


def test_push_errors_are_output_errors(tiny_bundle: Path) -> None:
    class Down:
        def create_repo(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("network is unreachable")

    with pytest.raises(OutputError, match="could not push .*ConnectionError: network is unreachable"):
        push_bundle(plan_push(tiny_bundle, REPO), api=Down())
