"""Serve the scheduled retrain deployments of the given model specs from this process.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deploy/serve.py retrain/demo/bike.toml
    python deploy/serve.py SPEC [SPEC ...] [--interval SECONDS]

The same as ``retrain serve --spec SPEC ...``; see deploy/README.md.
"""

from __future__ import annotations

import argparse

from flows.deployments import serve_models
from retrain.errors import RetrainError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="model spec files")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fire every SECONDS instead of each spec's cron (tests, demos)",
    )
    args = parser.parse_args(argv)
    try:
        serve_models(args.specs, interval_seconds=args.interval)
    except RetrainError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
