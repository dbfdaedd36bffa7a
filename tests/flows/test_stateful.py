"""Stateful mode: warm increments from the champion, a forced scratch retrain, lineage, rebuild."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain_flow import make_registry, retrain_flow
from retrain.config import load_spec
from retrain.errors import SchemaChangeError
from retrain.ledger import Ledger
from tests.conftest import spec_dict

runner = CliRunner()


def write_spec(tmp_path: Path, bike_dir: Path, **overrides) -> Path:
    base = {
        "stateful.scratch_every": 3,
        "stateful.increment_rounds": 10,
        "gate.tolerance": 0.1,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(
        yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **{**base, **overrides}))
    )
    return path


def flat(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.slow
def test_three_warm_increments_then_a_forced_scratch_retrain_with_lineage(tmp_path, bike_dir):
    # a lineage to follow: every increment promoted (a 4-day increment changes the champion
    # little, and 7 holdout days cannot always show it at least as good within 10%)
    spec_path = write_spec(tmp_path, bike_dir, **{"gate.tolerance": 0.25})
    as_of = ["2011-04-08", "2011-04-12", "2011-04-16", "2011-04-20", "2011-04-24"]

    outcomes = [
        retrain_flow(str(spec_path), mode="stateful", as_of=day, auto_approve=True) for day in as_of
    ]

    assert [o["strategy"] for o in outcomes] == ["scratch", "warm", "warm", "warm", "scratch"]
    assert all(o["promoted"] for o in outcomes), [o["decision"] for o in outcomes]
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    chain = registry.lineage("4")
    assert [v.version for v in chain] == ["4", "3", "2", "1"]
    assert [v.tags["retrain.increments"] for v in chain] == ["3", "2", "1", "0"]
    # each warm increment trained on the partitions after its parent's training end, with its
    # parent's newest ones replayed in front (stateful.replay): its window says so
    for child, parent in itertools.pairwise(chain):
        assert child.tags["retrain.window_start"] < parent.tags["retrain.window_end"]
        assert "replayed row(s)" in child.tags["retrain.strategy_reason"]
    data_versions = chain[0].tags["retrain.data_versions"].split(",")
    assert data_versions == [v.tags["retrain.data_version"] for v in reversed(chain)]
    # row counts and label statistics of the rows each version trained on
    rows = pd.concat([pd.read_csv(f) for f in sorted(bike_dir.glob("*.csv"))])
    when = pd.to_datetime(rows["dteday"]) + pd.to_timedelta(rows["hr"], unit="h")
    for version in chain:
        tags = version.tags
        start, end = (pd.Timestamp(tags[f"retrain.window_{e}"]) for e in ("start", "end"))
        trained_on = rows[(when >= start) & (when < end)]
        assert int(tags["retrain.rows"]) == len(trained_on)
        assert float(tags["retrain.label.mean"]) == pytest.approx(trained_on["cnt"].mean(), 1e-5)
    forced = registry.version("5").tags
    assert forced["retrain.parent_version"] == "none"
    assert "3 increments since the last scratch model" in forced["retrain.strategy_reason"]
    assert forced["retrain.champion_at_training"] == "4"
    # each increment adds 20 rounds x its share of the training window (at most 10)
    added = [registry.load_model(v).num_boost_round for v in ("2", "3", "4")]
    assert all(1 <= rounds < 10 for rounds in added)
    assert registry.load_model("4").booster_.num_trees() == 20 + sum(added)

    shown = runner.invoke(app, ["lineage", spec.name, "4", "--spec", str(spec_path)])
    assert shown.exit_code == 0, shown.output
    assert "lineage of bike-test v4" in flat(shown)
    assert " -> ".join(data_versions) in flat(shown)

    for version in ("1", "4"):
        rebuilt = runner.invoke(app, ["rebuild", version, "--spec", str(spec_path)])
        assert rebuilt.exit_code == 0, rebuilt.output
        assert "byte-identical" in flat(rebuilt)


def test_refit_keeps_the_trees_and_changes_the_leaves(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir, **{"stateful.strategy": "refit"})
    first = retrain_flow(str(spec_path), mode="stateful", as_of="2011-04-08", auto_approve=True)
    second = retrain_flow(str(spec_path), mode="stateful", as_of="2011-04-12", auto_approve=True)

    assert (first["strategy"], second["strategy"]) == ("scratch", "refit")
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    one, two = registry.load_model("1"), registry.load_model("2")
    assert one.booster_.num_trees() == two.booster_.num_trees()
    assert one.model_string() != two.model_string()


def test_a_schema_change_stops_warm_start_unless_config_allows_scratch(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir)
    retrain_flow(str(spec_path), mode="stateful", as_of="2011-04-08", auto_approve=True)
    added = {"features.numeric": ["temp", "hum", "windspeed", "hr", "workingday", "atemp"]}

    with pytest.raises(SchemaChangeError, match="feature 'atemp' is new"):
        retrain_flow(
            str(spec_path), mode="stateful", as_of="2011-04-12", auto_approve=True, overrides=added
        )
    fallback = retrain_flow(
        str(spec_path),
        mode="stateful",
        as_of="2011-04-12",
        auto_approve=True,
        overrides={**added, "stateful.on_schema_change": "scratch"},
    )

    assert fallback["strategy"] == "scratch"
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    assert (
        "schema changed since champion v1" in registry.version("2").tags["retrain.strategy_reason"]
    )
    assert Ledger(spec.state.ledger).runs(spec.name)[1].status == "failed"


def test_warm_start_that_loses_to_scratch_is_replaced_when_config_compares(tmp_path, bike_dir):
    # 1 round of increment cannot keep up with a 20-round scratch model on the new window
    spec_path = write_spec(
        tmp_path,
        bike_dir,
        **{
            "stateful.compare_with_scratch": True,
            "stateful.strategy": "refit",
            "stateful.refit_decay_rate": 1.0,
            "gate.tolerance": 0.0,
        },
    )
    retrain_flow(
        str(spec_path),
        mode="stateful",
        as_of="2011-04-08",
        auto_approve=True,
        overrides={"lightgbm.num_boost_round": 2},
    )
    outcome = retrain_flow(str(spec_path), mode="stateful", as_of="2011-04-26", auto_approve=True)

    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    reason = registry.version(outcome["version"]).tags["retrain.strategy_reason"]
    assert outcome["strategy"] == "scratch"
    assert "refit increment lost to scratch on the holdout" in reason


@pytest.mark.parametrize("mode", ["stateful", "scheduled"])
def test_an_automated_retrain_with_no_new_data_is_skipped_and_recorded(tmp_path, bike_dir, mode):
    spec_path = write_spec(tmp_path, bike_dir)
    first = retrain_flow(str(spec_path), mode=mode, as_of="2011-04-08", auto_approve=True)

    again = retrain_flow(str(spec_path), mode=mode, as_of="2011-04-08", auto_approve=True)

    assert first["status"] == "promoted"
    assert again["status"] == "skipped"
    assert "no new data" in again["decision"] or "no partition arrived" in again["decision"]
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    assert [r.status for r in ledger.runs(spec.name)] == ["skipped", "promoted"]
    assert [v.version for v in make_registry(spec, ledger).versions()] == ["1"]
