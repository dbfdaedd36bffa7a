"""``retrain gateway``: serve champion and challenger of one or more models over HTTP."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_edge import handled
from flows.settings import resolve_spec


@handled
def gateway_command(
    spec: Annotated[
        list[Path], typer.Option("--spec", "-s", help="Model spec file; repeat for more models.")
    ],
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "warning",
    threads_per_request: Annotated[
        int,
        typer.Option(
            min=1, help="BLAS / OpenMP threads per scoring call (concurrency comes from requests)."
        ),
    ] = 1,
) -> None:
    """Serve the models' champion and challenger (routing from each spec's [live] table)."""
    specs = [resolve_spec(path) for path in spec]
    # native thread pools loaded from here on (LightGBM's and implicit's OpenMP) read these at
    # load time; the gateway also limits the pools already loaded (numpy's BLAS)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads_per_request)
    import uvicorn

    from gateway.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(specs, threads_per_request)
    # a SIGTERM lets answers in flight finish and the prediction log drain before exit
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)


@handled
def live_evaluate_command(
    spec: Annotated[Path, typer.Option("--spec", "-s", help="Model spec file (.toml or .yaml).")],
    auto_approve: Annotated[
        bool, typer.Option(help="Carry out a promotion without waiting for an operator.")
    ] = False,
) -> None:
    """Evaluate the model's live test once now (the same flow `retrain serve` schedules)."""
    resolve_spec(spec)  # a bad spec fails here, before Prefect starts
    from rich.console import Console

    from flows.live_flow import live_evaluate_flow

    result = live_evaluate_flow(spec_path=str(spec.resolve()), auto_approve=auto_approve)
    out = Console()
    out.print(f"{result['model']}: {result['status']}: {result['decision']}")
    evidence = result.get("evidence") or {}
    for arm in evidence.get("arms", []):
        out.print(
            f"  {arm['arm']} v{arm['version']}: {arm['requests']} answer(s), "
            f"{arm['labelled']} labelled, {evidence.get('metric', 'metric')} "
            f"{_num(arm['metric'])} [{_num(arm['ci_low'])}, {_num(arm['ci_high'])}]"
        )
    if result.get("labelled"):
        out.print(f"  {result['labelled']} labelled answer(s) exported as training partitions")


def _num(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.6g}"
