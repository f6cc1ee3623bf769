"""A real Ray cluster for the distributed tests: ``ray start --head --block`` on 127.0.0.1 with a free port and
2 CPUs (so 2 worker processes for 2 actors), in a private temp folder, started once per session and stopped at
the end by signalling that process (it drains and stops the raylet, GCS and workers it started; no ``ray stop``,
which would stop every Ray on the machine). Tests that need no cluster (``--ray auto`` starts its own local
Ray) do not use it.

Without ray[data] (``pip install -e '.[distributed]'``) these tests are skipped, saying so.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before Ray is imported (it reads these once): every Ray here, the cluster, `--ray auto`'s local one and
# the drivers, talks over loopback only (by default Ray swaps 127.0.0.1 for this machine's network address)
# and authenticates with a token of this session's own (not ~/.ray/auth_token).
LOOPBACK_AND_TOKEN = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                      "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(LOOPBACK_AND_TOKEN)
os.environ.pop("RAY_ADDRESS", None)

from ..conftest import free_port, require_module  # noqa: E402

require_module("ray.data", "the distributed tests need Ray Data: pip install -e '.[distributed]'")
require_module("pyarrow", "the distributed tests need pyarrow: pip install -e '.[distributed]'")

RAY = Path(sys.executable).with_name("ray")


@dataclass
class RayCluster:
    address: str
    process: subprocess.Popen
    temp_dir: Path
    log: Path


def ray_env() -> dict[str, str]:
    """The environment for the cluster and the drivers: loopback, this session's token, no RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(LOOPBACK_AND_TOKEN)
    return env


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    port = free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 bytes
    log = temp_dir / "start.log"
    env = {**ray_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2"}  # nothing to drain when the tests are done
    command = [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
               "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    cluster = RayCluster(f"127.0.0.1:{port}", process, temp_dir, log)
    try:
        deadline = time.monotonic() + 90
        while "will now block forever" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield cluster
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # drains, then stops the processes it started
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
                process.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
