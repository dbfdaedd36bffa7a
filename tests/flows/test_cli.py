"""The retrain command line, run in-process against the test Prefect server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from retrain.ledger import SCHEMA_VERSION
from tests.conftest import spec_dict

runner = CliRunner()


def flat(result) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def write_spec(tmp_path: Path, bike_dir: Path, **overrides) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **overrides)))
    return path


def test_run_manual_prints_the_outcome_and_status_shows_the_champion(tmp_path, bike_dir):
    spec = write_spec(tmp_path, bike_dir)

    result = runner.invoke(
        app, ["run", "manual", "--spec", str(spec), "--as-of", "2011-04-29", "--auto-approve"]
    )
    assert result.exit_code == 0, result.output
    assert "gate passed; approved automatically" in flat(result)

    status = runner.invoke(app, ["status", "--spec", str(spec)])
    assert status.exit_code == 0, status.output
    assert "champion" in flat(status)
    assert "promoted" in flat(status)
    # the champion's data age: now minus its last training row (2011-04-21 23:00, the hour
    # before the 7-day holdout of an as-of of 2011-04-29 starts)
    assert "data age" in flat(status)
    assert "last training row 2011-04-21 23:00:00" in flat(status)


def test_a_spec_with_a_typo_is_refused_with_the_key_and_a_suggestion(tmp_path, bike_dir):
    data = spec_dict(bike_dir, tmp_path / "state")
    data["windows"]["trian"] = data["windows"].pop("train")
    spec = tmp_path / "typo.yaml"
    spec.write_text(yaml.safe_dump(data))

    result = runner.invoke(app, ["run", "manual", "--spec", str(spec), "--auto-approve"])

    assert result.exit_code == 3  # a bad spec
    assert "windows.trian: unknown key; did you mean 'train'?" in flat(result)
    assert not (tmp_path / "state").exists()  # nothing was created


def test_an_unparseable_as_of_is_an_error_that_says_how_to_write_it(tmp_path, bike_dir):
    spec = write_spec(tmp_path, bike_dir)
    result = runner.invoke(app, ["run", "manual", "--spec", str(spec), "--as-of", "yesterdayish"])
    assert result.exit_code == 2
    assert "write it like 2011-06-01" in flat(result)


def test_ledger_migrate_creates_the_schema_once(tmp_path, bike_dir):
    spec = write_spec(tmp_path, bike_dir)
    first = runner.invoke(app, ["ledger", "migrate", "--spec", str(spec)])
    second = runner.invoke(app, ["ledger", "migrate", "--spec", str(spec)])
    assert f"{SCHEMA_VERSION} migration(s) applied" in flat(first)
    assert "0 migration(s) applied" in flat(second)


@pytest.mark.slow
def test_demo_trains_promotes_and_refuses_a_careless_retrain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(app, ["demo", "--state-dir", "demo-state"])

    assert result.exit_code == 0, result.output
    assert "champion -> v2" in flat(result)
    assert "previous -> v1" in flat(result)
    assert "challenger -> v3" in flat(result)
    assert "worse than the champion v2" in flat(result)

    again = runner.invoke(app, ["demo", "--state-dir", "demo-state"])
    assert again.exit_code == 1
    assert "retrain demo --reset" in flat(again)


def test_rollback_moves_champion_back_to_previous_and_is_audited(tmp_path, bike_dir):
    from retrain.config import load_spec
    from retrain.ledger import Ledger

    spec = write_spec(tmp_path, bike_dir, **{"gate.tolerance": 0.5})
    for as_of in ("2011-04-22", "2011-04-29"):
        result = runner.invoke(
            app, ["run", "manual", "--spec", str(spec), "--as-of", as_of, "--auto-approve"]
        )
        assert result.exit_code == 0, result.output

    rolled = runner.invoke(
        app,
        [
            "rollback",
            "bike-test",
            "--spec",
            str(spec),
            "--actor",
            "oncall",
            "--reason",
            "complaints",
        ],
    )

    assert rolled.exit_code == 0, rolled.output
    assert "champion v2 -> v1" in flat(rolled)
    model_spec = load_spec(spec)
    last = Ledger(model_spec.state.ledger).alias_history("bike-test")[-2:]
    assert [(a["alias"], a["from_version"], a["to_version"], a["actor"]) for a in last] == [
        ("champion", "2", "1", "oncall"),
        ("previous", "1", "2", "oncall"),
    ]
    again = runner.invoke(app, ["rollback", "bike-test", "--spec", str(spec)])
    assert again.exit_code == 0  # rolling back twice swaps back: previous always exists
    assert "champion v1 -> v2" in flat(again)
    to = runner.invoke(app, ["rollback", "bike-test", "--spec", str(spec), "--to", "1"])
    assert to.exit_code == 0, to.output
    assert "champion v2 -> v1 (v2 is now `previous`); audited" in flat(to)

    # the ledger read only: one clear error, nothing moves, and a retry never says "audited"
    ledger = Ledger(model_spec.state.ledger)
    audited = len(ledger.alias_history("bike-test"))
    database = model_spec.state.ledger.removeprefix("sqlite:///")
    data = yaml.safe_load(spec.read_text())
    data["state"]["ledger_url"] = f"sqlite:///file:{database}?mode=ro&uri=true"
    read_only = tmp_path / "read-only.yaml"
    read_only.write_text(yaml.safe_dump(data))
    for _ in range(2):
        refused = runner.invoke(app, ["rollback", "bike-test", "--spec", str(read_only)])
        assert refused.exit_code == 7, refused.output  # infrastructure (docs/cli.md)
        assert "down or read only; nothing was moved" in flat(refused)
        assert "audited" not in flat(refused) and "Traceback" not in refused.output
    assert len(ledger.alias_history("bike-test")) == audited
    status = runner.invoke(app, ["status", "--spec", str(spec), "--check"])
    assert status.exit_code == 0, status.output  # nothing moved outside the audit


def test_rollback_without_a_previous_champion_says_so(tmp_path, bike_dir):
    spec = write_spec(tmp_path, bike_dir)
    result = runner.invoke(app, ["rollback", "bike-test", "--spec", str(spec)])
    assert result.exit_code == 1
    assert "has no champion version: there is nothing to roll back to" in flat(result)


def test_an_unreachable_tracking_server_fails_the_run_cleanly_and_records_it(
    tmp_path, bike_dir, monkeypatch
):
    import socket

    from retrain.config import load_spec
    from retrain.ledger import Ledger

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    spec = write_spec(
        tmp_path, bike_dir, **{"state.tracking_uri": f"http://ops:pw123@127.0.0.1:{port}"}
    )

    result = runner.invoke(
        app, ["run", "manual", "--spec", str(spec), "--as-of", "2011-04-29", "--auto-approve"]
    )

    assert result.exit_code == 7  # infrastructure down
    assert "does not answer (gave up after its retries)" in flat(result)
    assert "pw123" not in result.output
    model_spec = load_spec(spec)
    [run] = Ledger(model_spec.state.ledger).runs("bike-test")
    assert run.status == "failed" and "pw123" not in (run.error or "")


def test_a_bad_spec_is_one_error_line_on_stderr_and_nothing_on_stdout(tmp_path, bike_dir):
    data = spec_dict(bike_dir, tmp_path / "state")
    data["windows"]["trian"] = data["windows"].pop("train")
    spec = tmp_path / "typo.yaml"
    spec.write_text(yaml.safe_dump(data))

    result = runner.invoke(app, ["run", "manual", "--spec", str(spec), "--json"])

    assert result.exit_code == 3
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: invalid model spec {spec}")
    assert "windows.trian: unknown key; did you mean 'train'?" in line


def test_json_output_is_the_outcome_at_full_precision_and_a_skipped_run_exits_6(tmp_path, bike_dir):
    import json

    spec = write_spec(tmp_path, bike_dir)
    first = runner.invoke(
        app,
        ["run", "manual", "--spec", str(spec), "--as-of", "2011-04-29", "--auto-approve", "--json"],
    )
    assert first.exit_code == 0, first.output
    outcome = json.loads(first.stdout)  # stdout holds the JSON and nothing else
    assert (outcome["status"], outcome["version"], outcome["promoted"]) == ("promoted", "1", True)
    assert outcome["decision"] == "gate passed; approved automatically"
    # full precision: the metrics as the backtest computed them, not the table's 4 digits
    assert outcome["candidate"] != round(outcome["candidate"], 4)

    status = json.loads(runner.invoke(app, ["status", "--spec", str(spec), "--json"]).stdout)
    assert status["aliases"] == {"champion": "1"}
    [version] = status["versions"]
    assert version["metrics"]["backtest.mae.candidate"] == float(f"{outcome['candidate']:.6g}")
    [run] = status["runs"]
    assert (run["run"], run["status"], run["version"]) == (1, "promoted", "1")
    assert run["backtest"]["candidate"] == outcome["candidate"]
    assert run["backtest"]["baseline"] == outcome["baseline"]

    chain = json.loads(
        runner.invoke(app, ["lineage", "bike-test", "1", "--spec", str(spec), "--json"]).stdout
    )
    assert [(v["version"], v["strategy"], v["parent"]) for v in chain] == [("1", "scratch", None)]
    signals = runner.invoke(app, ["signals", "bike-test", "--spec", str(spec), "--json"])
    assert json.loads(signals.stdout) == {"model": "bike-test", "signals": [], "decisions": []}

    # the same data again: the stateful retrain has nothing new to learn from
    again = runner.invoke(
        app, ["run", "stateful", "--spec", str(spec), "--as-of", "2011-04-29", "--auto-approve"]
    )
    assert again.exit_code == 6, again.output
    assert flat(again).startswith("stateful retrain skipped: ")
    skipped = runner.invoke(
        app,
        ["run", "stateful", "--spec", str(spec), "--as-of", "2011-04-29", "--json"],
    )
    assert skipped.exit_code == 6
    assert json.loads(skipped.stdout)["status"] == "skipped"

    checked = runner.invoke(
        app, ["monitor", "--spec", str(spec), "--as-of", "2011-04-30", "--json"]
    )
    assert checked.exit_code == 0, checked.output
    check = json.loads(checked.stdout)
    assert check["signals"], check
    assert {r["check_id"] for r in check["signals"]} == {check["check_id"]}
    history = json.loads(
        runner.invoke(app, ["signals", "bike-test", "--spec", str(spec), "--json"]).stdout
    )
    assert [c["id"] for c in history["decisions"]] == [check["check_id"]]


def test_the_table_shows_four_significant_digits(tmp_path, bike_dir):
    from retrain.config import load_spec
    from retrain.ledger import Ledger

    spec = write_spec(tmp_path, bike_dir)
    result = runner.invoke(
        app, ["run", "manual", "--spec", str(spec), "--as-of", "2011-04-29", "--auto-approve"]
    )
    assert result.exit_code == 0, result.output
    [run] = Ledger(load_spec(spec).state.ledger).runs("bike-test")
    assert f" {run.metrics['candidate']:.4g} " in result.output
    assert f" {run.metrics['baseline']:.4g} " in result.output


def test_a_candidate_the_gate_refuses_exits_5_and_says_why(tmp_path, bike_dir):
    spec = write_spec(tmp_path, bike_dir)
    first = runner.invoke(
        app, ["run", "manual", "--spec", str(spec), "--as-of", "2011-04-29", "--auto-approve"]
    )
    assert first.exit_code == 0, first.output
    careless = tmp_path / "careless.yaml"  # the same model and state, one tree
    careless.write_text(
        yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **{"lightgbm.num_boost_round": 1}))
    )

    refused = runner.invoke(
        app, ["run", "manual", "--spec", str(careless), "--as-of", "2011-04-29", "--auto-approve"]
    )

    assert refused.exit_code == 5, refused.output
    assert "worse than the champion v1" in flat(refused)
