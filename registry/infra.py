"""Infra validation's edge: serve a registered version with ``mlflow models serve``, for real.

The version's model is downloaded, an environment holding ONLY its declared requirements
(``requirements.txt`` of the model, nothing of retrain) is built with ``python -m venv`` and
pip, once per set of requirements and interpreter (cached machine-wide, keyed by their hash),
and ``mlflow models serve --env-manager local`` of that environment serves the model in a
subprocess started in an empty folder (so nothing of this checkout can be imported). Raw rows
go over HTTP (``POST /invocations``, ``dataframe_split``); the answers are compared with the
same model's answers in this process (:func:`retrain.infra.compare_answers`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException

from registry.client import ModelRegistry, loading_pyfunc, reachable
from registry.errors import RegistryError
from retrain.infra import InfraCheck, compare_answers

logger = logging.getLogger(__name__)

READY_MARKER = ".ready"


class InfraError(RegistryError):
    """The model server could not be built, started or asked: the reason refuses the model."""


def requirements_key(requirements: str) -> str:
    """The cache key of an environment: its requirements (sorted lines) and this interpreter
    (its resolved path and full version: ``python -m venv`` links the environment to it), so
    one cache can serve every state directory and every Python of the machine."""
    lines = sorted(line.strip() for line in requirements.splitlines() if line.strip())
    digest = hashlib.sha256("\n".join(lines).encode())
    digest.update(f"|{Path(sys.executable).resolve()}|{sys.version}".encode())
    return digest.hexdigest()[:16]


def model_environment(requirements_file: Path, cache_dir: Path, deadline: float) -> Path:
    """A virtualenv holding only what ``requirements_file`` lists, built once and cached.

    Built in place under ``cache_dir/<hash>`` while holding a lock (two runs, in one process
    or in several, never build the same environment at once: the second waits, then finds it
    built); a marker file written last says it is complete, so a build cut off halfway is
    thrown away and redone.
    """
    # the commands run in another folder: absolute paths
    requirements_file, cache_dir = requirements_file.resolve(), cache_dir.resolve()
    requirements = requirements_file.read_text()
    env = cache_dir / requirements_key(requirements)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env / READY_MARKER).exists():
            return env
        shutil.rmtree(env, ignore_errors=True)
        logger.info("infra validation: building the model's environment %s", env)
        _run([sys.executable, "-m", "venv", str(env)], deadline, "create the virtualenv")
        _run(
            [
                str(env / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "-r",
                str(requirements_file),
            ],
            deadline,
            f"install the model's requirements ({', '.join(requirements.split())})",
        )
        (env / "requirements.txt").write_text(requirements)
        (env / READY_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return env


def _run(command: list[str], deadline: float, what: str) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise InfraError(f"ran out of time before it could {what} (gate.infra_timeout)")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=left, cwd=tempfile.gettempdir()
        )
    except subprocess.TimeoutExpired:
        raise InfraError(f"could not {what} within gate.infra_timeout") from None
    if done.returncode != 0:
        raise InfraError(f"could not {what}: {_tail(done.stderr or done.stdout)}")


def _tail(text: str, lines: int = 6) -> str:
    """What a failed command said: its error lines (the first is the cause), else its end."""
    kept = [line.strip() for line in text.strip().splitlines()]
    kept = [line for line in kept if line and not line.startswith("WARNING: Location")]
    errors = [line for line in kept if re.match(r"^[\w.]*(Error|Exception)\b.*: ", line)]
    return " | ".join(dict.fromkeys(errors) if errors else kept[-lines:])[:1500]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def model_server(
    env: Path, model_dir: Path, deadline: float, workdir: Path
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``mlflow models serve -m model_dir --env-manager local`` of ``env``, until it answers.

    Started in ``workdir`` (an empty folder) with a clean environment: only the model's own
    environment on PATH, no PYTHONPATH. Stopped (its process group) when the block ends.
    """
    port = _free_port()
    log = workdir / "server.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    clean["PATH"] = f"{env / 'bin'}{os.pathsep}{clean.get('PATH', '')}"
    clean["VIRTUAL_ENV"] = str(env)
    command = [str(env / "bin" / "python"), "-m", "mlflow", "models", "serve", "-m"]
    command += [
        str(model_dir.resolve()),
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    command += ["-w", "1"]
    with open(log, "w") as out:
        server = subprocess.Popen(
            command,
            cwd=workdir,
            env=clean,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise InfraError(
                    f"`mlflow models serve` exited with code {server.returncode} before it "
                    f"answered: {_tail(log.read_text())}"
                )
            if time.monotonic() > deadline:
                raise InfraError(
                    "`mlflow models serve` did not answer /ping within gate.infra_timeout: "
                    + _tail(log.read_text())
                )
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        yield url, server
    finally:
        stop(server)


def stop(server: subprocess.Popen[str]) -> None:
    """Stop a server this module started: its own process group, by its id."""
    if server.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


def invoke(url: str, rows: pd.DataFrame, params: Mapping[str, Any] | None, timeout: float) -> Any:
    """``POST /invocations`` with the rows as ``dataframe_split``; the ``predictions``."""
    split = json.loads(rows.to_json(orient="split", index=False, date_format="iso"))
    body: dict[str, Any] = {"dataframe_split": split}
    if params:
        body["params"] = dict(params)
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=max(timeout, 1.0)) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise InfraError(
            f"the server refused the raw holdout rows (HTTP {exc.code}): "
            f"{exc.read().decode(errors='replace')[:1000]}"
        ) from None
    return answer.get("predictions", answer) if isinstance(answer, dict) else answer


def served_answers(
    model_dir: Path,
    env: Path,
    rows: pd.DataFrame,
    params: Mapping[str, Any] | None,
    deadline: float,
) -> Any:
    """What ``mlflow models serve`` of ``env`` answers for ``rows``."""
    with (
        tempfile.TemporaryDirectory(prefix="retrain-infra-") as tmp,
        model_server(env, model_dir, deadline, Path(tmp)) as (url, _),
    ):
        return invoke(url, rows, params, deadline - time.monotonic())


def in_process_answers(
    model_dir: Path, rows: pd.DataFrame, params: Mapping[str, Any] | None
) -> Any:
    with loading_pyfunc():
        model = mlflow.pyfunc.load_model(str(model_dir))
    return model.predict(rows, params=dict(params) if params else None)


def validate_served_model(
    model_dir: Path,
    rows: pd.DataFrame,
    params: Mapping[str, Any] | None,
    cache_dir: Path,
    timeout_seconds: float,
) -> InfraCheck:
    """Serve a downloaded model for real and compare its answers with the in-process ones."""
    started = time.monotonic()
    deadline = started + timeout_seconds

    def check(passed: bool, reason: str) -> InfraCheck:
        seconds = time.monotonic() - started
        return InfraCheck(passed, reason, seconds, len(rows))

    try:
        expected = in_process_answers(model_dir, rows, params)
        env = model_environment(model_dir / "requirements.txt", cache_dir, deadline)
        served = served_answers(model_dir, env, rows, params, deadline)
    except (InfraError, MlflowException, ValueError) as exc:
        return check(False, f"infra validation failed: {exc}")
    if isinstance(expected, pd.DataFrame):
        served = pd.DataFrame(served)
    mismatch = compare_answers(expected, served)
    if mismatch is not None:
        return check(False, f"infra validation failed: `mlflow models serve` answers {mismatch}")
    seconds = time.monotonic() - started
    return check(
        True,
        f"infra validation passed: `mlflow models serve` in an environment of only the model's "
        f"requirements answered {len(rows)} raw holdout row(s) as the model does in process "
        f"({seconds:.1f}s)",
    )


@reachable
def validate_version(
    registry: ModelRegistry,
    version: str,
    rows: pd.DataFrame,
    params: Mapping[str, Any] | None,
    cache_dir: Path,
    timeout_seconds: float,
) -> InfraCheck:
    """Infra-validate a registered version; its outcome and cost go on the version and run."""
    with tempfile.TemporaryDirectory(prefix="retrain-infra-model-") as tmp:
        # the registered content only (location and digest checked) is what gets served
        local = Path(registry.download_trusted(str(version), tmp))
        outcome = validate_served_model(local, rows, params, cache_dir, timeout_seconds)
    record_check(registry, version, outcome)
    log = logger.info if outcome.passed else logger.warning
    log("%s version %s: %s", registry.model_name, version, outcome.reason)
    return outcome


def record_check(registry: ModelRegistry, version: str, outcome: InfraCheck) -> None:
    for key, value in outcome.tags().items():
        registry.client.set_model_version_tag(registry.model_name, version, key, value)
    run_id = registry.version(version).run_id
    if run_id:
        registry.client.log_metric(run_id, "infra_validation_seconds", outcome.seconds)
        registry.client.log_metric(run_id, "infra_validation_passed", float(outcome.passed))
