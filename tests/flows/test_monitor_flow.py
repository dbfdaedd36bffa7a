"""The monitor flow on a real season change (summer -> December) and on stable summer data."""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from typer.testing import CliRunner

from flows.cli import app
from flows.monitor_flow import TAMPERED_EVENT, monitor_flow, report_path
from flows.retrain_flow import make_registry, retrain_flow
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import bike_slice, spec_dict

runner = CliRunner()


def redate(frame: pd.DataFrame, first_day: str) -> pd.DataFrame:
    """Real rows moved to consecutive days starting at first_day (hours kept)."""
    days = pd.to_datetime(frame["dteday"])
    offset = pd.Timestamp(first_day) - days.min()
    return frame.assign(dteday=(days + offset).dt.strftime("%Y-%m-%d"))


DECEMBER = ("2011-12-01", "2011-12-15")  # moved to 2011-08-15 .. 08-29: a season change
AUGUST = ("2011-08-15", "2011-08-22")  # the real next week


def write_case(tmp_path: Path, bike_hourly: pd.DataFrame, fresh: tuple[str, str]) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    # real summer 2011 (stable weather from mid-June to late August), then the fresh days
    bike_slice(bike_hourly, "2011-06-15", "2011-08-15").to_csv(folder / "summer.csv", index=False)
    later = redate(bike_slice(bike_hourly, *fresh), "2011-08-15")
    later.to_csv(folder / "fresh.csv", index=False)
    spec = spec_dict(
        folder,
        tmp_path / "state",
        **{
            "windows.train": "47D",
            "windows.holdout": "14D",
            "monitor.any": ["drift"],
            "monitor.max_age": "365D",
            "monitor.min_new_rows": 1_000_000,
            "monitor.cooldown": "1h",
        },
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    # champion: trained on [06-15, 08-01), backtested on [08-01, 08-15)
    retrain_flow(str(path), as_of="2011-08-15", auto_approve=True)
    return path


def test_a_season_change_requests_a_continual_retrain_with_its_reasons(tmp_path, bike_hourly):
    spec_path = write_case(tmp_path, bike_hourly, DECEMBER)

    out = monitor_flow(str(spec_path), as_of="2011-08-29")

    assert out["retrain"], out["reasons"]
    assert "drift" in out["fired"]
    assert any(r.startswith("drift: drift in") and "temp" in r for r in out["reasons"])
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    [check] = ledger.recent_checks(spec.name)
    assert check["retrain"] and check["champion_version"] == "1"
    temp = [s for s in ledger.signal_history(spec.name, "drift") if s["feature"] == "temp"]
    assert temp and temp[0]["fired"]
    assert report_path(spec, out["check_id"]).exists()

    outcome = retrain_flow(
        str(spec_path),
        mode="continual",
        reason="continual trigger: " + "; ".join(out["reasons"]),
        as_of="2011-08-29",
        actor="monitor",
        auto_approve=True,
        trigger_check=str(out["check_id"]),
    )

    registry = make_registry(spec, ledger)
    tags = registry.version(outcome["version"]).tags
    assert tags["retrain.mode"] == "continual"
    assert "drift in" in tags["retrain.reason"]
    assert tags["retrain.trigger_check"] == str(out["check_id"])
    assert tags["retrain.strategy"] == "warm"
    artifacts = {
        f.path
        for f in registry.client.list_artifacts(
            registry.version(outcome["version"]).run_id, "evidence"
        )
    }
    assert f"evidence/drift-check-{out['check_id']}.png" in artifacts


def test_stable_data_requests_no_retrain(tmp_path, bike_hourly):
    spec_path = write_case(tmp_path, bike_hourly, AUGUST)

    out = monitor_flow(str(spec_path), as_of="2011-08-22")

    assert not out["retrain"]
    assert "drift" not in out["fired"]
    assert out["reasons"] == ["no rule fired"]


def test_no_second_retrain_while_one_is_in_flight(tmp_path, bike_hourly):
    spec_path = write_case(tmp_path, bike_hourly, DECEMBER)
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    running = ledger.start_run(spec.name, "continual", "earlier trigger")

    out = monitor_flow(str(spec_path), as_of="2011-08-29")

    assert not out["retrain"]
    assert f"a retrain of bike-test is already running (ledger run {running})" in out["reasons"]


def test_monitor_and_signals_commands_print_the_check_and_the_history(tmp_path, bike_hourly):
    spec_path = write_case(tmp_path, bike_hourly, DECEMBER)

    checked = runner.invoke(app, ["monitor", "--spec", str(spec_path), "--as-of", "2011-08-29"])
    history = runner.invoke(app, ["signals", "bike-test", "--spec", str(spec_path)])

    assert checked.exit_code == 0, checked.output
    assert "retrain requested" in " ".join(checked.output.split())
    assert history.exit_code == 0, history.output
    assert "trigger decisions" in history.output and "temp" in history.output


def test_the_monitor_says_when_there_is_no_champion_yet(tmp_path, bike_dir):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state")))
    result = runner.invoke(app, ["monitor", "--spec", str(path)])
    assert result.exit_code == 1  # an error that is neither spec, data nor infrastructure
    assert "has no champion yet: train one first" in " ".join(result.output.split())


@pytest.mark.parametrize("missing", ["hum"])
def test_a_feature_missing_from_fresh_data_blocks_the_trigger(tmp_path, bike_hourly, missing):
    spec_path = write_case(tmp_path, bike_hourly, DECEMBER)
    fresh = Path(yaml.safe_load(spec_path.read_text())["source"]["path"]) / "fresh.csv"
    pd.read_csv(fresh).drop(columns=[missing]).to_csv(fresh, index=False)

    out = monitor_flow(str(spec_path), as_of="2011-08-29")

    assert not out["retrain"]
    # ingest quarantines the days of the file that lost the column (never read as NaN), and a
    # quarantined fresh partition blocks the trigger until the delivery is fixed
    assert any(
        "14 fresh partition(s) quarantined (2011-08-15, 2011-08-16, 2011-08-17 and 11 more)" in b
        and f"fresh.csv lacks column(s) '{missing}' (features.numeric)" in b
        for b in out["blocked_by"]
    ), out["blocked_by"]


def open_handles(database: Path) -> int:
    """File descriptors of this process open on ``database`` (Linux /proc)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while listing
            count += Path(os.readlink(fd)) == database
    return count


def test_a_check_and_a_retrain_close_their_ledger_connections(tmp_path, bike_hourly):
    """A monitor runs thousands of checks in one process: none may leave a connection open."""
    spec_path = write_case(tmp_path, bike_hourly, AUGUST)
    database = Path(sa.make_url(load_spec(spec_path).state.ledger).database or "").resolve()

    monitor_flow(str(spec_path), as_of="2011-08-22")
    assert database.exists() and open_handles(database) == 0
    retrain_flow(str(spec_path), as_of="2011-08-29", auto_approve=True)
    assert open_handles(database) == 0


def tampered_events(model: str, since: datetime) -> list:
    with get_client(sync_client=True) as client:
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[TAMPERED_EVENT]),
                resource=EventResourceFilter(id=[f"retrain.model.{model}"]),
                occurred=EventOccurredFilter(since=since),
            ),
            limit=50,
        )
    return list(page.events)


def test_an_alias_moved_outside_retrain_is_flagged_announced_and_moved_back(tmp_path, bike_hourly):
    spec_path = write_case(tmp_path, bike_hourly, AUGUST)
    spec = load_spec(spec_path)
    # a second version (2 trees: the gate may refuse it); one of the two is not the champion
    retrain_flow(
        str(spec_path),
        as_of="2011-08-15",
        auto_approve=True,
        force=True,
        overrides={"lightgbm.num_boost_round": 2},
    )
    registry = make_registry(spec, Ledger(spec.state.ledger))
    champion = registry.alias_version("champion")
    [other] = [v.version for v in registry.versions() if v.version != champion]
    started = datetime.now(UTC)
    # someone with access to the registry moves the champion by hand
    MlflowClient(spec.state.tracking).set_registered_model_alias(spec.name, "champion", other)

    status = CliRunner().invoke(app, ["status", "--spec", str(spec_path), "--check"])
    assert status.exit_code == 1, status.output
    assert (
        f"alias champion is v{other} in the registry but v{champion} in retrain's audit: it "
        "was moved outside retrain"
    ) in " ".join(status.output.split())
    assert CliRunner().invoke(app, ["status", "--spec", str(spec_path)]).exit_code == 0

    flagged = monitor_flow(str(spec_path), as_of="2011-08-22")  # revert off by default
    assert flagged["tampered"] == [
        {
            "alias": "champion",
            "registry_version": other,
            "audited_version": champion,
            "reverted": False,
        }
    ]
    assert registry.alias_version("champion") == other

    out = monitor_flow(
        str(spec_path), as_of="2011-08-22", overrides={"monitor.revert_tampered_alias": True}
    )

    assert out["tampered"][0]["reverted"] is True
    assert registry.alias_version("champion") == champion
    last = registry.ledger.alias_history(spec.name)[-1]
    assert (last["alias"], last["from_version"], last["to_version"], last["actor"]) == (
        "champion",
        other,
        champion,
        "monitor",
    )
    assert last["reason"] == f"reverted: moved outside retrain to {other}"
    assert registry.alias_drift() == ()
    assert CliRunner().invoke(app, ["status", "--spec", str(spec_path), "--check"]).exit_code == 0
    deadline = time.monotonic() + 60
    while len(events := tampered_events(spec.name, started)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(events) == 2
    assert {e.payload["reverted"] for e in events} == {"True", "False"}
    assert {e.payload["registry_version"] for e in events} == {other}
