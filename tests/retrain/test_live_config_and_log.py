"""The [live] table is validated; predictions and feedback round-trip through the ledger and
become labelled training partitions."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from retrain.config import parse_spec
from retrain.errors import LiveError, SpecError
from retrain.labelled import labelled_frame, write_partitions
from retrain.ledger import Ledger
from retrain.live import outcomes
from tests.conftest import spec_dict


def test_live_defaults_to_off(tmp_path: Path):
    spec = parse_spec(spec_dict(tmp_path, tmp_path / "s"))
    assert spec.live.routing == "off" and spec.live.required == "none"


def test_a_required_live_stage_needs_that_routing(tmp_path: Path):
    with pytest.raises(SpecError, match=r"live.required = 'canary' needs live.routing = 'canary'"):
        parse_spec(spec_dict(tmp_path, tmp_path / "s", **{"live.required": "canary"}))


def test_interleaving_is_for_recommenders(tmp_path: Path):
    with pytest.raises(SpecError, match="it is for family = 'als'"):
        parse_spec(spec_dict(tmp_path, tmp_path / "s", **{"live.routing": "interleave"}))


def test_unknown_live_keys_and_bad_values_are_named(tmp_path: Path):
    with pytest.raises(SpecError, match=r"live.sharee: unknown key; did you mean 'share'"):
        parse_spec(spec_dict(tmp_path, tmp_path / "s", **{"live.sharee": 0.1}))
    with pytest.raises(SpecError, match=r"live.label_delay"):
        parse_spec(spec_dict(tmp_path, tmp_path / "s", **{"live.label_delay": "-1h"}))


def test_answers_and_feedback_round_trip_and_become_training_rows(tmp_path: Path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    spec = parse_spec(spec_dict(tmp_path, tmp_path / "s"))
    at = datetime(2026, 1, 1, 10, 30)
    rows = [{"dteday": "2011-03-01", "hr": h, "temp": 0.3} for h in range(2)]
    ledger.record_predictions(
        [
            {
                "request_id": "r1",
                "model": "m",
                "version": "1",
                "arm": "champion",
                "role": "served",
                "routing": "shadow",
                "routing_key": "r1",
                "at": at,
                "inputs": {"rows": rows},
                "fingerprint": "f",
                "output": {"predictions": [10.0, 20.0]},
                "latency_ms": 2.0,
                "error": None,
            },
            {
                "request_id": "r1",
                "model": "m",
                "version": "2",
                "arm": "challenger",
                "role": "shadow",
                "routing": "shadow",
                "routing_key": "r1",
                "at": at,
                "inputs": {"rows": rows},
                "fingerprint": "f",
                "output": {"predictions": [12.0, 14.0]},
                "latency_ms": 3.0,
                "error": None,
            },
        ]
    )
    ledger.record_feedback([{"request_id": "r1", "outcome": {"labels": [11.0, 15.0]}, "at": at}])
    logged = ledger.predictions("m", with_inputs=True)
    assert ledger.prediction_count("m") == 2 and logged[0]["inputs"] == {"rows": rows}
    found = outcomes(
        "lightgbm",
        "mae",
        logged,
        ledger.feedback(["r1"]),
        now=at + timedelta(hours=2),
        label_delay=timedelta(hours=1),
    )
    assert {o.arm: o.value for o in found} == {"champion": 3.0, "challenger": 1.0}
    # younger than the label delay: left out
    assert (
        outcomes(
            "lightgbm", "mae", logged, ledger.feedback(), now=at, label_delay=timedelta(hours=1)
        )
        == []
    )
    frame = labelled_frame(spec, logged, ledger.feedback())
    assert list(frame["cnt"]) == [11.0, 15.0] and len(frame) == 2  # the served arm only
    paths = write_partitions(frame, tmp_path / "labelled")
    assert [p.name for p in paths] == ["labelled-2026010110.parquet"]
    assert list(pd.read_parquet(paths[0])["hr"]) == [0, 1]
    assert write_partitions(frame, tmp_path / "labelled") == paths  # idempotent


def test_labelled_export_needs_the_inputs(tmp_path: Path):
    spec = parse_spec(spec_dict(tmp_path, tmp_path / "s"))
    pred = {"request_id": "r", "role": "served", "inputs": None, "at": datetime(2026, 1, 1)}
    fb = {"request_id": "r", "outcome": {"label": 1.0}, "at": datetime(2026, 1, 1)}
    with pytest.raises(LiveError, match=r"set live\.log_inputs = true"):
        labelled_frame(spec, [pred], [fb])
