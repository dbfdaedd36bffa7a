"""Create the example automations on retrain's model events (docs/operations.md).

    PREFECT_API_URL=http://127.0.0.1:4200/api python deploy/automations.py \\
        --notify-url https://hooks.slack.com/services/... --page-url https://events.pagerduty...

- ``retrain-notify``: POST to --notify-url on every ``retrain.model.refused`` / ``failed``;
- ``retrain-page-failed-twice``: POST to --page-url when one model's run fails right after
  another failed run of it (a run that ends otherwise in between resets the count), at most
  once per model per --within-hours (default 24).

The URLs are kept in two Prefect Webhook blocks (``retrain-notify``, ``retrain-page``).
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from flows.automations import create_examples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notify-url", required=True, help="webhook for refused/failed")
    parser.add_argument("--page-url", required=True, help="webhook that pages someone")
    parser.add_argument("--model", default=None, help="only this model (default: every model)")
    parser.add_argument(
        "--within-hours",
        type=float,
        default=24.0,
        help="at most one page per model per this many hours",
    )
    args = parser.parse_args(argv)
    made = create_examples(
        args.notify_url, args.page_url, args.model, timedelta(hours=args.within_hours)
    )
    for automation in made:
        print(f"created automation {automation.name} ({automation.id})")


if __name__ == "__main__":
    main()
