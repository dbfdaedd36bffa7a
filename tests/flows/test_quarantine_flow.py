"""A quarantined partition is recorded in the ledger and the retrain goes on with the others."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa
import yaml

from flows.retrain_flow import retrain_flow
from retrain.config import load_spec
from retrain.ledger import Ledger, retrain_runs
from tests.conftest import spec_dict


def test_a_misplaced_partition_file_is_quarantined_in_the_ledger_and_the_rest_trains(
    tmp_path, bike_dir
):
    april = pd.read_csv(bike_dir / "2011-04.csv")
    day = april["dteday"] == "2011-04-10"
    april[~day].to_csv(bike_dir / "2011-04.csv", index=False)
    broken = april[day].copy()
    broken.loc[broken.index[:2], "dteday"] = "2011-04-30"  # a broken export
    broken.to_csv(bike_dir / "2011-04-10.csv", index=False)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state")))

    outcome = retrain_flow(str(spec_path), as_of="2011-04-29", auto_approve=True)

    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    [quarantined] = [m for m in ledger.manifest(spec.name) if m["status"] == "quarantined"]
    assert quarantined["partition_key"] == "2011-04-10"
    assert quarantined["rows"] == int(day.sum())
    assert "2011-04-10.csv of partition 2011-04-10" in quarantined["reason"]
    assert "timestamp 'dteday' lies outside" in quarantined["reason"]
    assert "fix the export" in quarantined["reason"]
    ok = {m["partition_key"] for m in ledger.manifest(spec.name) if m["status"] == "ok"}
    assert "2011-04-09" in ok and "2011-04-11" in ok and "2011-04-10" not in ok
    # the training window (2011-04-01 .. 04-22) trained on every other day's rows
    days = pd.to_datetime(april["dteday"])
    window = (days >= "2011-04-01") & (days < "2011-04-22") & ~day
    [run] = ledger.runs(spec.name)
    assert run.status == "promoted" and outcome["promoted"]
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(retrain_runs.c.rows).where(retrain_runs.c.id == run.id))
        assert rows.scalar() == int(window.sum())
