"""The command line's edge: exit codes, one-line errors, quiet logging and JSON output.

Nothing heavy is imported here (no pandas, Prefect or MLflow): ``retrain --help`` loads this
module. An error class of a package that was never imported cannot have been raised, so the
mapping looks the classes up in ``sys.modules`` instead of importing them.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import json
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import typer

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class ExitCode(enum.IntEnum):
    """What ``retrain`` exits with (documented in docs/cli.md)."""

    OK = 0
    FAILED = 1  # any other error (a missing version, an approval refused to an approver, ...)
    USAGE = 2  # bad options or arguments (typer's own), or a run that cannot wait for approval
    BAD_SPEC = 3
    BAD_DATA = 4
    REFUSED = 5  # the gate or the approver refused the candidate; the registry refused a move
    SKIPPED = 6  # the retrain had nothing to do, or another retrain of the model holds it
    INFRASTRUCTURE = 7  # ledger, MLflow tracking server or Prefect server unreachable; disk
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    TERMINATED = 143  # SIGTERM


class CliState:
    """Options of the ``retrain`` callback the commands see (``retrain -v status``)."""

    verbose = False
    json = False
    standalone = False  # the console script (not an in-process runner): may exit at once
    # SIGTERM arrived: whatever exception ends the command now is the termination (Prefect's
    # engine, stopped between two task runs, can turn our SystemExit into a ValueError)
    terminated = False


state = CliState()

# (module, class name) -> exit code; the first class in an exception's MRO that is listed wins
_CODES: dict[tuple[str, str], ExitCode] = {
    ("retrain.errors", "SpecError"): ExitCode.BAD_SPEC,
    ("retrain.errors", "DataError"): ExitCode.BAD_DATA,
    ("retrain.errors", "TrainingError"): ExitCode.BAD_DATA,
    ("retrain.errors", "BacktestError"): ExitCode.BAD_DATA,
    ("retrain.errors", "CacheError"): ExitCode.INFRASTRUCTURE,
    ("retrain.errors", "LedgerUnreachable"): ExitCode.INFRASTRUCTURE,
    ("registry.errors", "TrackingUnreachable"): ExitCode.INFRASTRUCTURE,
    ("registry.errors", "PromotionRefused"): ExitCode.REFUSED,
    ("flows.errors", "PrefectUnreachable"): ExitCode.INFRASTRUCTURE,
    ("flows.errors", "ApprovalNotAllowed"): ExitCode.REFUSED,
    ("flows.errors", "CannotWait"): ExitCode.USAGE,
    ("flows.errors", "UsageError"): ExitCode.USAGE,
    ("retrain.errors", "SimulationError"): ExitCode.USAGE,  # the simulator's options
    ("httpx", "TransportError"): ExitCode.INFRASTRUCTURE,
    ("sqlalchemy.exc", "OperationalError"): ExitCode.INFRASTRUCTURE,
}
# OSErrors that mean "the machine", not the input: a full disk, a read-only or forbidden dir
_INFRA_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}
# the project's own base classes: their messages are written for the user
_OWN = {
    ("retrain.errors", "RetrainError"),
    ("registry.errors", "RegistryError"),
    ("flows.errors", "FlowError"),
    ("gateway.errors", "GatewayError"),
}


INTERRUPTED = "interrupted: stopped; a retrain that had started is recorded as failed"
TERMINATED = "terminated (SIGTERM): stopped; a retrain that had started is recorded as failed"


def _classes(exc: BaseException) -> list[tuple[str, str]]:
    return [(c.__module__, c.__qualname__) for c in type(exc).__mro__]


def exit_code_of(exc: BaseException) -> ExitCode:
    """The documented exit code of an exception that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if _terminated(exc):
        return ExitCode.TERMINATED
    for key in _classes(exc):
        if key in _CODES:
            return _CODES[key]
    if isinstance(exc, OSError) and exc.errno in _INFRA_ERRNOS:
        return ExitCode.INFRASTRUCTURE
    return ExitCode.FAILED


def _terminated(exc: BaseException) -> bool:
    """SIGTERM: our handler's SystemExit(143), Prefect's own TerminationSignal, or any error
    raised after the signal arrived."""
    if state.terminated and not isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, SystemExit):
        return exc.code == ExitCode.TERMINATED
    return ("prefect.exceptions", "TerminationSignal") in _classes(exc)


def one_line(text: str) -> str:
    """A message on one line: its lines joined with '; '."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def message_of(exc: BaseException) -> str:
    """What the user reads after ``error:``: the project's own message as it is; anything else
    with its type, what to do about it, and where the traceback is."""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if _terminated(exc):
        return TERMINATED
    text = one_line(str(exc))
    if any(key in _OWN for key in _classes(exc)):
        return text
    if isinstance(exc, OSError) and exc.errno in _INFRA_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else ""
        return (
            f"{exc.strerror or text}{where}: free disk space or fix the permissions of the "
            "state directory, then run again"
        )
    if exit_code_of(exc) is ExitCode.INFRASTRUCTURE:
        return f"a server does not answer ({type(exc).__name__}: {text}): start it or fix its URL"
    return f"{type(exc).__name__}: {text} (an internal error: run with -v for the traceback)"


def fail(message: str, code: int = ExitCode.FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr; the ``typer.Exit`` to raise."""
    typer.echo(f"error: {one_line(message)}", err=True)
    return typer.Exit(code=int(code))


def handled(command: F) -> F:
    """A command whose errors end as one ``error: ...`` line on stderr and a documented exit
    code; ``-v`` adds the traceback. typer reads the signature through ``__wrapped__``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose")) or state.verbose
        state.json = bool(kwargs.get("as_json"))
        setup_logging(verbose)
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException):
            raise
        except BaseException as exc:
            if isinstance(exc, GeneratorExit) or (
                isinstance(exc, SystemExit) and not _terminated(exc)
            ):
                raise
            if verbose:
                traceback.print_exception(exc, file=sys.stderr)
            code = exit_code_of(exc)
            error = fail(message_of(exc), code)
            if code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
                stop_now(code)
            raise error from None

    return wrapper  # type: ignore[return-value]


def stop_now(code: int) -> None:
    """After an interrupt: stop this process's children (Prefect's temporary server, MLflow's
    helpers) and, as the console script, exit at once. What the run recorded (the ledger's
    failed run, the flow run's Crashed state) is written before the exception gets here;
    what is left are exit handlers that would wait on the stopped children."""
    if not state.standalone:
        return  # an in-process runner (tests): its children are not ours to stop
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=3)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- quiet by default ---------------------------------------------------------------------------

# Prefect and MLflow read these when they are imported (the CLI imports them lazily, after this)
QUIET_ENV = {"PREFECT_LOGGING_LEVEL": "WARNING", "MLFLOW_LOGGING_LEVEL": "WARNING"}
FLOW_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def quiet_environment(verbose: bool) -> None:
    """Before Prefect or MLflow is imported: their INFO logs only with ``-v``. An operator's
    own environment wins. Only in the console script: an in-process runner's (the tests')
    environment and warnings are not ours to change."""
    if not state.standalone:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, "INFO" if verbose else value)
    # library warnings (MLflow, pydantic, LightGBM ...) are for developers: they become log
    # records of `py.warnings`, shown with -v only (libraries insert their own warning filters
    # in front of ours at import, so a filter alone does not hold)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)
    # MLflow's HTTP client retries a server that does not answer: a warning per retry
    logging.getLogger("urllib3").setLevel(logging.WARNING if verbose else logging.ERROR)


class FlowRunTracebacks(logging.Filter):
    """Keeps Prefect's own flow/task-run error records (each a long traceback) out of the
    console: the command prints the error once, as one line. They still reach the Prefect API."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name in FLOW_RUN_LOGGERS and record.levelno >= logging.ERROR)


def setup_logging(verbose: bool) -> None:
    quiet_environment(verbose)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if verbose:
        for name in ("retrain", "registry", "flows"):
            logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per Prefect API call
    state.verbose = state.verbose or verbose
    quiet_flow_runs()


def quiet_flow_runs() -> None:
    """Attach :class:`FlowRunTracebacks` to the root's handlers (again after Prefect's logging
    setup replaced them), unless ``-v``; only in the console script (an in-process runner's
    handlers, e.g. pytest's log capture, are not ours)."""
    if state.verbose or not state.standalone:
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, FlowRunTracebacks) for f in handler.filters):
            handler.addFilter(FlowRunTracebacks())


def on_terminate() -> None:
    """SIGTERM ends the command like Ctrl-C does (Python's default kills it without cleanup:
    the ledger run would stay `running`)."""

    def _raise(signum: int, frame: Any) -> None:
        state.terminated = True
        raise SystemExit(ExitCode.TERMINATED)

    with contextlib.suppress(ValueError):  # not the main thread (an in-process runner)
        signal.signal(signal.SIGTERM, _raise)
        # Ctrl-C raises KeyboardInterrupt even when started in the background by a shell
        signal.signal(signal.SIGINT, signal.default_int_handler)


# -- JSON ---------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    if hasattr(value, "isoformat"):  # pandas Timestamp
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def emit_json(payload: Any) -> None:
    """``payload`` as JSON on stdout, full precision, nothing else on the line."""
    sys.stdout.write(json.dumps(_plain(payload), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def metric(value: float | None) -> str:
    """A metric in a table: 4 significant digits (0.2648 vs 0.2552, 69.43, 1.235e+04)."""
    if value is None:
        return "-"
    return f"{value:.4g}"
