"""Plots that go with a decision: they render for every state a decision can be in."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from retrain.config import LiveSpec
from retrain.live import evaluate
from retrain.live.outcomes import Outcome
from retrain.reports import live_plot

T0 = datetime(2026, 1, 1)
PNG = b"\x89PNG\r\n\x1a\n"


def outcomes(arm: str, version: str, values) -> list[Outcome]:
    return [
        Outcome(f"r-{i}", arm, version, T0 + timedelta(seconds=i), arm == "champion", 5.0, False, v)
        for i, v in enumerate(values)
    ]


def decision(rows: list[Outcome]):
    return evaluate(
        LiveSpec(routing="shadow", min_samples=50),
        model="m",
        metric="mae",
        greater_is_better=False,
        champion_version="1",
        challenger_version="2",
        outcomes=rows,
        seed=0,
    )


def test_the_live_plot_shows_a_decided_test(tmp_path):
    rng = np.random.default_rng(0)
    rows = outcomes("champion", "1", rng.normal(10, 1, 200)) + outcomes(
        "challenger", "2", rng.normal(8, 1, 200)
    )
    decided = decision(rows)
    assert decided.action == "promote"

    path = live_plot(tmp_path / "live.png", decided)

    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000


def test_the_live_plot_renders_before_any_label_arrived(tmp_path):
    unlabelled = [
        Outcome(f"{arm}-{i}", arm, v, T0, True, 5.0, False, None)
        for arm, v in (("champion", "1"), ("challenger", "2"))
        for i in range(3)
    ]
    waiting = decision(unlabelled)
    assert waiting.action == "continue"

    path = live_plot(tmp_path / "live.png", waiting)

    assert path.read_bytes()[:8] == PNG
