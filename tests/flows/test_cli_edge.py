"""The command line's edge: start-up cost, version, exit codes, one-line errors, quiet logs."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from importlib import metadata

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app
from flows.cli_edge import ExitCode, FlowRunTracebacks, exit_code_of, handled, message_of
from flows.errors import ApprovalNotAllowed, CannotWait, PrefectUnreachable, UsageError
from registry.errors import PromotionRefused, RegistryError, TrackingUnreachable
from retrain.errors import (
    DataError,
    EmptyWindowError,
    LedgerError,
    LedgerUnreachable,
    RetrainError,
    SimulationError,
    SpecError,
    TrainingError,
)

runner = CliRunner()
HEAVY = ("pandas", "prefect", "mlflow", "lightgbm", "sklearn", "sqlalchemy")


def test_importing_the_cli_loads_no_pandas_prefect_mlflow_or_lightgbm():
    # `retrain --help` imports flows.cli and nothing the commands import when they run
    code = (
        "import json, sys; import flows.cli; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_version_prints_the_installed_distribution_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"retrain {metadata.version('retrain')}\n"


def test_help_documents_the_exit_codes_and_verbose():
    result = runner.invoke(app, ["--help"])
    text = " ".join(result.stdout.split())
    assert "3 bad spec, 4 bad data, 5 refused" in text
    assert "--verbose -v <bool> Show Prefect's and MLflow's logs" in text


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (SpecError("x"), ExitCode.BAD_SPEC),
        (DataError("x"), ExitCode.BAD_DATA),
        (EmptyWindowError("x"), ExitCode.BAD_DATA),
        (TrainingError("x"), ExitCode.BAD_DATA),
        (PromotionRefused("x"), ExitCode.REFUSED),
        (ApprovalNotAllowed("x"), ExitCode.REFUSED),
        (LedgerUnreachable("x"), ExitCode.INFRASTRUCTURE),
        (TrackingUnreachable("x"), ExitCode.INFRASTRUCTURE),
        (PrefectUnreachable("x"), ExitCode.INFRASTRUCTURE),
        (OSError(errno.ENOSPC, "No space left on device"), ExitCode.INFRASTRUCTURE),
        (CannotWait("x"), ExitCode.USAGE),
        (UsageError("x"), ExitCode.USAGE),
        (SimulationError("x"), ExitCode.USAGE),
        (LedgerError("not migrated"), ExitCode.FAILED),
        (RegistryError("x"), ExitCode.FAILED),
        (RetrainError("x"), ExitCode.FAILED),
        (ValueError("x"), ExitCode.FAILED),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (SystemExit(143), ExitCode.TERMINATED),
    ],
)
def test_each_error_class_has_its_documented_exit_code(exc, code):
    assert exit_code_of(exc) == code


def test_a_full_disk_names_the_file_and_the_fix():
    exc = OSError(errno.ENOSPC, "No space left on device", "/state/mlflow.db")
    assert message_of(exc) == (
        "No space left on device (/state/mlflow.db): free disk space or fix the permissions "
        "of the state directory, then run again"
    )


def _app_raising(exc: BaseException) -> typer.Typer:
    probe = typer.Typer()

    @probe.command()
    @handled
    def boom(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        raise exc

    return probe


def test_an_error_is_one_line_on_stderr_with_its_exit_code_and_nothing_on_stdout():
    result = runner.invoke(_app_raising(SpecError("invalid model spec x.toml:\n  windows.trian")))
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr == "error: invalid model spec x.toml:; windows.trian\n"


def test_an_internal_error_says_so_and_minus_v_shows_the_traceback():
    quiet = runner.invoke(_app_raising(ZeroDivisionError("division by zero")))
    assert quiet.exit_code == 1
    assert quiet.stderr == (
        "error: ZeroDivisionError: division by zero (an internal error: run with -v for the "
        "traceback)\n"
    )
    loud = runner.invoke(_app_raising(ZeroDivisionError("division by zero")), ["-v"])
    assert loud.exit_code == 1
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.endswith("(an internal error: run with -v for the traceback)\n")


def test_prefects_flow_run_tracebacks_are_kept_off_the_console_but_not_other_errors():
    keep = FlowRunTracebacks()

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "msg", None, None)

    assert not keep.filter(record("prefect.flow_runs", logging.ERROR))
    assert not keep.filter(record("prefect.task_runs", logging.ERROR))
    assert keep.filter(record("prefect.flow_runs", logging.WARNING))
    assert keep.filter(record("retrain.ingest", logging.ERROR))


def test_any_error_after_sigterm_arrived_is_the_termination(monkeypatch):
    """Prefect's engine, stopped by our SIGTERM handler between two task runs, can raise a
    ValueError of its own instead of our SystemExit: the command still ends as terminated."""
    from flows.cli_edge import TERMINATED, state

    error = ValueError("Task run is not set")
    assert exit_code_of(error) == ExitCode.FAILED
    monkeypatch.setattr(state, "terminated", True)
    assert exit_code_of(error) == ExitCode.TERMINATED
    assert message_of(error) == TERMINATED
    assert exit_code_of(KeyboardInterrupt()) == ExitCode.INTERRUPTED
