"""A binary label written as text (HIGH/LOW) trains, registers and serves through ``positive``,
and without it the run fails with one error naming the cause and the fix (real Prefect, real
MLflow, real bike data relabelled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.retrain_flow import make_registry, retrain_flow
from registry.live import load_servable
from retrain.config import load_spec
from retrain.errors import EmptyWindowError
from retrain.ledger import Ledger
from tests.conftest import spec_dict

AS_OF = "2011-04-29"


def relabel(bike_dir: Path) -> None:
    """Replace the count by a text label: HIGH above the month's median hour, else LOW."""
    for path in sorted(bike_dir.glob("*.csv")):
        rows = pd.read_csv(path)
        rows["demand"] = np.where(rows["cnt"] > rows["cnt"].median(), "HIGH", "LOW")
        rows.to_csv(path, index=False)


def write_spec(tmp_path: Path, bike_dir: Path, **top) -> Path:
    data = spec_dict(
        bike_dir,
        tmp_path / "state",
        task="binary",
        metric="logloss",
        label="demand",
        **{"features.leakage": ["casual", "registered", "cnt"]},
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**data, **top}))
    return path


def test_a_text_label_with_positive_is_registered_and_served_as_the_probability_of_it(
    tmp_path, bike_dir
):
    relabel(bike_dir)
    spec_path = write_spec(tmp_path, bike_dir, positive="HIGH")

    outcome = retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True)

    assert outcome["promoted"] and outcome["candidate"] < outcome["baseline"]
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    version = registry.version(outcome["version"])
    assert version.tags["retrain.label_mapping"] == "HIGH = 1, other values = 0"
    april = pd.read_csv(bike_dir / "2011-04.csv")
    served = load_servable(registry, outcome["version"])
    scores = np.asarray(served.predict(april))  # the source's raw rows, as pandas reads them
    high = april["demand"].to_numpy() == "HIGH"
    assert scores[high].mean() > 0.5 > scores[~high].mean()


def test_a_text_label_without_a_mapping_fails_once_naming_the_setting(tmp_path, bike_dir):
    relabel(bike_dir)
    spec_path = write_spec(tmp_path, bike_dir)

    with pytest.raises(EmptyWindowError) as info:
        retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True)

    message = str(info.value)
    # every day before the as-of: March and 28 days of April
    assert message.startswith(
        "no usable partition: all 59 partition(s) (2011-03-01 to 2011-04-28) were quarantined "
        "for one reason: label 'demand' has values outside {0, 1}: HIGH, LOW"
    )
    assert message.endswith(
        "set positive = 'HIGH' or 'LOW' (the value that means 1), or labels = {HIGH = 1, "
        "LOW = 0}, in the spec"
    )
    spec = load_spec(spec_path)
    [run] = Ledger(spec.state.ledger).runs(spec.name)
    assert run.status == "failed" and "set positive" in (run.error or "")
