"""Serve the scheduled retrain deployments of the given model specs from this process.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deploy/serve.py retrain/demo/bike.toml
    python deploy/serve.py SPEC [SPEC ...] [--interval SECONDS]
    python deploy/serve.py SPEC [SPEC ...] --work-pool retrain   # register on a work pool

The same as ``retrain serve --spec SPEC ...``; see deploy/README.md. With ``--work-pool`` the
deployments are registered on that process work pool (created if missing) and the command
returns: `prefect worker start --pool retrain` processes run them (docs/scale.md).
"""

from __future__ import annotations

import argparse

from flows.deployments import deploy_models, serve_models
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
    parser.add_argument(
        "--work-pool",
        default=None,
        metavar="NAME",
        help="register the deployments on this process work pool instead of serving them",
    )
    args = parser.parse_args(argv)
    try:
        if args.work_pool:
            for name in deploy_models(args.specs, args.work_pool, interval_seconds=args.interval):
                print(f"deployed {name} on work pool {args.work_pool}")
            return
        serve_models(args.specs, interval_seconds=args.interval)
    except RetrainError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
