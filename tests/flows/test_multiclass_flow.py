"""A multiclass model end to end on a real label: the bike data's weather situation
(``weathersit``: 1 clear, 2 mist, 3 light rain or snow, 4 heavy rain: three hours in two years).
Real Prefect, real MLflow: the flow promotes it, a warm start keeps its classes, the partition
holding the unlisted class 4 is quarantined, and ``mlflow.pyfunc`` loads it and answers classes
(and probabilities), as the gateway passes them on."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from flows.retrain_flow import make_registry, retrain_flow
from gateway.models import Loaded, predict_rows
from registry.cards import read_card
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import bike_slice, spec_dict


def weather_spec(tmp_path: Path, bike_hourly: pd.DataFrame) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    # January holds the first heavy-rain hour (2011-01-26 16:00): its day is quarantined
    for month in ("2011-01", "2011-03", "2011-04"):
        end = (pd.Period(month) + 1).strftime("%Y-%m")
        bike_slice(bike_hourly, f"{month}-01", f"{end}-01").to_csv(
            folder / f"{month}.csv", index=False
        )
    data = spec_dict(
        folder,
        tmp_path / "state",
        name="bike-weather",
        task="multiclass",
        classes=[1, 2, 3],
        metric="multi_logloss",
        label="weathersit",
        **{
            "features.numeric": ["temp", "hum", "windspeed", "hr", "cnt", "casual"],
            "features.categorical": ["weekday"],
            "features.leakage": [],
            "gate.slices": ["weekday"],
            "gate.min_slice_rows": 10,
            "gate.tolerance": 0.05,
        },
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_multiclass_model_is_promoted_warm_started_and_served_as_classes(tmp_path, bike_hourly):
    spec_path = weather_spec(tmp_path, bike_hourly)

    first = retrain_flow(str(spec_path), as_of="2011-04-22", auto_approve=True)

    assert first["promoted"], first["decision"]
    assert first["metric"] == "multi_logloss" and first["candidate"] < first["baseline"]
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    [heavy_rain] = [r for r in ledger.manifest(spec.name) if r["status"] == "quarantined"]
    assert heavy_rain["partition_key"] == "2011-01-26"
    assert (
        "label 'weathersit' has 1 row(s) of class '4', which classes (1, 2, 3)"
        in (heavy_rain["reason"])
    )
    registry = make_registry(spec, ledger)
    version = registry.version(first["version"])
    assert version.tags["retrain.label_mapping"] == "1 = 0, 2 = 1, 3 = 2"
    run = mlflow.MlflowClient(spec.state.tracking).get_run(version.run_id)
    assert run.data.params["classes"] == "1, 2, 3"
    shares = [float(v) for k, v in version.tags.items() if "share_" in k]
    assert len(shares) == 3 and abs(sum(shares) - 1) < 1e-6
    evidence = {a.path for a in registry.client.list_artifacts(version.run_id, "evidence")}
    assert {"evidence/backtest_classes.csv", "evidence/backtest.png"} <= evidence
    card = read_card(registry, first["version"])
    assert "## Metrics (multi_logloss, lower is better, same holdout rows)" in card
    assert "- multiclass, answers one of 3 classes (training share): 1 (" in card

    # served where MLflow serves: raw rows in, the class as the data writes it out
    april = pd.read_csv(spec.source.path / "2011-04.csv").head(50)
    uri = registry.client.get_model_version_download_uri(spec.name, first["version"])
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(tmp_path / "served"), tracking_uri=registry.tracking_uri
    )
    model = mlflow.pyfunc.load_model(local)
    classes = np.asarray(model.predict(april))
    assert set(classes.tolist()) <= {1, 2, 3} and classes.dtype.kind == "i"
    proba = model.predict(april, params={"probabilities": True})
    assert list(proba.columns) == ["class", "probability_1", "probability_2", "probability_3"]
    assert np.allclose(proba.iloc[:, 1:].sum(axis=1), 1.0)
    assert (proba["class"].to_numpy() == classes).all()
    hits = float(np.mean(classes == april["weathersit"].to_numpy()))
    majority = float(np.mean(april["weathersit"].to_numpy() == 1))
    assert hits > majority  # better than the majority class on these rows
    # the gateway's answer: JSON values per row
    loaded = Loaded(first["version"], model)
    rows = april.head(2).to_dict("records")
    assert predict_rows(loaded, rows) == classes[:2].tolist()
    [row, _] = predict_rows(loaded, rows, probabilities=True)
    assert row["class"] == classes[0] and set(row) == {
        "class",
        "probability_1",
        "probability_2",
        "probability_3",
    }

    # a week later, a stateful increment: warm start from the champion, same classes, slices
    second = retrain_flow(str(spec_path), mode="stateful", as_of="2011-04-29", auto_approve=True)

    assert second["strategy"] == "warm", second
    tags = registry.version(second["version"]).tags
    assert tags["retrain.parent_version"] == first["version"]
    slices = pd.read_csv(
        registry.client.download_artifacts(
            tags_run := registry.version(second["version"]).run_id,
            "evidence/backtest_slices.csv",
            str(tmp_path),
        )
    )
    assert set(slices["feature"]) == {"weekday"} and len(slices) >= 5, tags_run


@pytest.mark.slow
def test_a_multiclass_model_passes_infra_validation_on_a_real_model_server(tmp_path, bike_hourly):
    spec_path = weather_spec(tmp_path, bike_hourly)
    # the environment cache is machine-wide (the test run's): a LightGBM model's requirements
    # are the same for every task, so the environment tests/registry/test_servable.py built is
    # reused (the server, the rows and the answers are this model's own)

    outcome = retrain_flow(
        str(spec_path),
        as_of="2011-04-22",
        auto_approve=True,
        overrides={"gate.infra_validation": True},
    )

    assert outcome["promoted"], outcome["decision"]
    spec = load_spec(spec_path)
    tags = make_registry(spec, Ledger(spec.state.ledger)).version(outcome["version"]).tags
    assert tags["retrain.infra_validation"] == "passed"
