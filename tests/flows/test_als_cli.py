"""`retrain recommend` and `retrain demo --family als`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain_flow import make_registry, retrain_flow
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import als_spec_dict, spec_dict

runner = CliRunner()


def flat(result) -> str:
    return " ".join(result.output.split())


def write_spec(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_recommend_reads_the_champion_and_states_the_popularity_fallback(tmp_path, taste_csv):
    spec_path = write_spec(tmp_path, als_spec_dict(taste_csv, tmp_path / "state"))
    retrain_flow(str(spec_path), mode="manual", as_of="2024-01-25", auto_approve=True)

    shown = runner.invoke(
        app, ["recommend", "--user", "4", "--user", "nobody", "-k", "3", "--spec", str(spec_path)]
    )

    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.output.splitlines() if " als " in line or "popularity " in line]
    assert sum(" als " in line for line in rows) == 3
    assert "top 3 items of taste-als v1" in flat(shown)
    assert "popularity fallback for user(s) nobody: unknown to v1" in flat(shown)


def shown_items(output: str) -> list[str]:
    """The item column of `retrain recommend`'s ALS rows (rich draws cells with U+2502)."""
    rows = [line.split("\u2502") for line in output.splitlines() if " als " in line]
    return [cells[3].strip() for cells in rows]


def test_rollback_of_an_als_model_moves_champion_back_and_recommend_answers_from_it(
    tmp_path, taste_csv
):
    spec_path = write_spec(tmp_path, als_spec_dict(taste_csv, tmp_path / "state"))
    weak = {"als.factors": 2, "als.iterations": 1}
    retrain_flow(str(spec_path), as_of="2024-01-25", auto_approve=True, overrides=weak)
    better = retrain_flow(str(spec_path), as_of="2024-01-25", auto_approve=True)
    assert better["promoted"], better["decision"]
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    registry = make_registry(spec, ledger)
    assert registry.aliases() == {"champion": "2", "previous": "1"}
    audited = len(ledger.alias_history(spec.name))

    rolled = runner.invoke(
        app,
        ["rollback", spec.name, "--spec", str(spec_path), "--actor", "ana", "--reason", "odd recs"],
    )

    assert rolled.exit_code == 0, rolled.output
    assert "taste-als: champion v2 -> v1 (v2 is now `previous`); audited" in flat(rolled)
    assert registry.aliases() == {"champion": "1", "previous": "2"}
    moves = [
        (row["alias"], row["from_version"], row["to_version"], row["actor"], row["reason"])
        for row in ledger.alias_history(spec.name)[audited:]
    ]
    assert moves == [
        ("champion", "2", "1", "ana", "rollback: odd recs"),
        ("previous", "1", "2", "ana", "rolled back from 2"),
    ]
    shown = runner.invoke(app, ["recommend", "--user", "4", "-k", "5", "--spec", str(spec_path)])
    assert shown.exit_code == 0, shown.output
    assert "top 5 items of taste-als v1" in flat(shown)
    expected = {
        v: registry.load_model(v).recommend(["4"], k=5)["item"].astype(str).tolist()
        for v in ("1", "2")
    }
    assert expected["1"] != expected["2"]  # the two versions answer differently
    assert shown_items(shown.output) == expected["1"]


def test_recommend_without_a_champion_says_how_to_train_one(tmp_path, taste_csv):
    spec_path = write_spec(tmp_path, als_spec_dict(taste_csv, tmp_path / "state"))

    shown = runner.invoke(app, ["recommend", "--user", "4", "--spec", str(spec_path)])

    assert shown.exit_code == 1
    assert "taste-als has no champion yet: train one with `retrain demo --family als`" in flat(
        shown
    )


def test_recommend_refuses_a_tabular_spec(tmp_path):
    spec_path = write_spec(tmp_path, spec_dict(tmp_path, tmp_path / "state"))

    shown = runner.invoke(app, ["recommend", "--user", "4", "--spec", str(spec_path)])

    assert shown.exit_code == 2
    assert "bike-test is a lightgbm model: `retrain recommend` needs an ALS spec" in flat(shown)


def test_an_unknown_demo_family_is_refused_naming_the_choices(tmp_path):
    shown = runner.invoke(app, ["demo", "--family", "xgboost", "--state-dir", str(tmp_path)])

    assert shown.exit_code == 2
    assert "--family 'xgboost' is unknown; use one of ['als', 'lightgbm']" in flat(shown)


@pytest.mark.slow
def test_the_movielens_demo_ends_with_a_champion_that_recommend_reads(tmp_path):
    state = tmp_path / "demo"

    demo = runner.invoke(app, ["demo", "--family", "als", "--state-dir", str(state)])

    assert demo.exit_code == 0, demo.output
    assert "MovieLens latest-small, implicit ALS, NDCG@10" in flat(demo)
    assert f"retrain recommend --user 1 --state-dir {state}" in flat(demo)
    champion = re.search(r"champion -> v(\d+)", flat(demo))
    assert champion, flat(demo)
    shown = runner.invoke(app, ["recommend", "--user", "1", "--state-dir", str(state)])
    assert shown.exit_code == 0, shown.output
    assert f"top 10 items of movielens-als v{champion.group(1)}" in flat(shown)


def test_rebuild_of_an_als_version_says_it_is_not_supported(tmp_path, taste_csv):
    spec_path = write_spec(tmp_path, als_spec_dict(taste_csv, tmp_path / "state"))
    retrain_flow(str(spec_path), mode="manual", as_of="2024-01-25", auto_approve=True)

    shown = runner.invoke(app, ["rebuild", "1", "--spec", str(spec_path)])

    assert shown.exit_code == 2
    assert "checks LightGBM boosters only; taste-als has family = 'als'" in flat(shown)
