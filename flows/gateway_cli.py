"""``retrain gateway``: serve champion and challenger of one or more models over HTTP."""

from __future__ import annotations

import logging
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
) -> None:
    """Serve the models' champion and challenger (routing from each spec's [live] table)."""
    specs = [resolve_spec(path) for path in spec]
    import uvicorn

    from gateway.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(specs)
    # a SIGTERM lets answers in flight finish and the prediction log drain before exit
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)
