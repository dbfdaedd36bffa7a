"""A real Dask cluster for tests: the `dask scheduler` and `dask worker` commands of this venv.

Not a LocalCluster: separate processes (each in its own process group, killed afterwards),
reached only by the scheduler address, as production runs them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

BIN = Path(sys.executable).parent
START_TIMEOUT = 90
# the Dask trainer runs one LightGBM training task (_train_part) per worker that holds data
TRAIN_TASK = "_train_part"


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)  # the worker's nanny and its worker process
                process.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@contextlib.contextmanager
def dask_cluster(root: Path, workers: int = 2) -> Iterator[str]:
    """`dask scheduler` on a free port and ``workers`` single-threaded `dask worker`s; yields
    the scheduler address once every worker has joined."""
    import distributed

    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    commands = {
        "scheduler": [
            str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port,
            "--no-dashboard", "--no-show",
        ],
        **{
            f"worker-{i}": [
                str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                "--no-dashboard", "--name", f"worker-{i}", "--host", "127.0.0.1",
                "--local-directory", str(root / f"worker-{i}"),
            ]
            for i in range(workers)
        },
    }  # fmt: skip
    processes: dict[str, subprocess.Popen] = {}
    logs = {name: root / f"{name}.log" for name in commands}
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(
                command,
                cwd=root,
                stdout=logs[name].open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    log = _tail(logs[name])
                    pytest.fail(f"`dask {name}` exited with {process.returncode}:\n{log}")
            try:
                with distributed.Client(address, timeout="5s") as client:
                    left = max(1.0, deadline - time.monotonic())
                    client.wait_for_workers(workers, timeout=left)
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the Dask cluster at {address} did not have {workers} workers within "
                        f"{START_TIMEOUT} s:\n" + "\n".join(_tail(log) for log in logs.values())
                    )
                time.sleep(1)
        yield address
    finally:
        for process in reversed(list(processes.values())):
            _stop(process)


def training_workers(stream: list[dict]) -> set[str]:
    """The workers that ran one of LightGBM's training tasks, from a Dask task stream."""
    return {task["worker"] for task in stream if TRAIN_TASK in str(task["key"])}
