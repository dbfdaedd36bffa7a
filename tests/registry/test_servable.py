"""A registered model serves anywhere MLflow serves: its own code, real requirements, raw rows.

The champions here are made by the families' own steps (ingest, features, fit, the evidence
samples, the signature sample) on real data, registered and promoted through the registry; the
slow tests load them in a fresh virtualenv that has only the model's requirements (no retrain)
and serve them with ``mlflow models serve``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model
from mlflow.types.schema import AnyType

from registry import CandidateRecord, ModelRegistry
from registry.client import SERVED_PACKAGES, loading_pyfunc, requirements
from registry.infra import invoke, model_environment, model_server, validate_version
from retrain.config import DERIVED_FEATURES, ModelSpec, parse_spec
from retrain.families import family_of
from retrain.families.spine import prepare, source_rows
from retrain.features import FeatureCache
from retrain.ingest import TS, parse_timestamps
from retrain.ledger import Ledger
from retrain.promotion import automatic_approval, decide
from retrain.servable import DERIVED
from retrain.stateful import scratch
from tests.conftest import als_spec_dict, bike_slice, spec_dict, taste_stream

AS_OF = {"lightgbm": "2011-04-29", "als": "2024-01-25"}


@dataclass(frozen=True)
class Champion:
    family: str
    spec: ModelSpec
    registry: ModelRegistry
    version: str
    model_dir: Path  # the version's model, downloaded
    holdout_csv: Path  # the run's evidence/holdout_sample.csv, downloaded

    @property
    def params(self) -> dict[str, Any]:
        return family_of(self.spec).predict_params(self.spec)

    def holdout(self) -> pd.DataFrame:
        return pd.read_csv(self.holdout_csv)


def make_champion(family: str, root: Path, tracking_uri: str, bike: pd.DataFrame) -> Champion:
    data = root / "data"
    data.mkdir(parents=True)
    if family == "als":
        taste_stream().to_csv(data / "ratings.csv", index=False)
        spec = parse_spec(als_spec_dict(data / "ratings.csv", root / "state"))
    else:
        for month in ("03", "04"):
            end = "2011-05-01" if month == "04" else "2011-04-01"
            bike_slice(bike, f"2011-{month}-01", end).to_csv(
                data / f"2011-{month}.csv", index=False
            )
        # a derived feature: the model computes it from the raw timestamp columns
        spec = parse_spec(spec_dict(data, root / "state", **{"features.derived": ["dayofyear"]}))
    ledger = Ledger(f"sqlite:///{root / 'ledger.db'}")
    ledger.migrate()
    registry = ModelRegistry(
        tracking_uri, f"{spec.name}-{family}-served", ledger, artifact_root=root / "artifacts"
    )
    steps = family_of(spec)
    prepared = prepare(spec, as_of=pd.Timestamp(AS_OF[family]), ledger=ledger)
    trained = steps.fit(spec, prepared, scratch("test"), None)
    evidence = root / "evidence"
    evidence.mkdir()
    source_rows(spec, prepared.holdout).to_csv(evidence / "holdout_sample.csv", index=False)
    record = CandidateRecord(
        model_dir=trained.model.save(root / "trainer"),
        description="manual retrain: servable test",
        params={},
        metrics={},
        version_tags={"retrain.mode": "manual", "retrain.gate": "passed"},
        artifacts={"holdout_sample": evidence / "holdout_sample.csv"},
        sample=steps.signature_sample(spec, prepared, trained),
        family=spec.family,
        predict_params=steps.predict_params(spec),
        inputs=steps.serving_inputs(spec),
    )
    version = registry.register_candidate(record, actor="test")
    decision = decide(
        version=version, gate_passed=True, gate_reasons=(), approval=automatic_approval("ci")
    )
    registry.record_decision(decision)
    registry.promote(decision, actor="ci")
    uri = registry.client.get_model_version_download_uri(registry.model_name, version)
    model_dir = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(root / "served"), tracking_uri=tracking_uri
        )
    )
    run_id = registry.version(version).run_id
    csv = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="evidence/holdout_sample.csv",
        dst_path=str(root / "run"),
        tracking_uri=tracking_uri,
    )
    return Champion(family, spec, registry, version, model_dir, Path(csv))


@pytest.fixture(scope="module")
def champions(tmp_path_factory, tracking_uri, bike_hourly) -> dict[str, Champion]:
    return {
        family: make_champion(
            family, tmp_path_factory.mktemp(f"served-{family}"), tracking_uri, bike_hourly
        )
        for family in ("lightgbm", "als")
    }


@pytest.fixture(scope="module")
def env_cache(model_env_cache: Path) -> Path:
    """Model environments for the slow tests (and the infra validation), built once per run
    (the session's shared cache: the flow tests serving a LightGBM model reuse its build)."""
    return model_env_cache


def in_process(champion: Champion, rows: pd.DataFrame) -> Any:
    with loading_pyfunc():
        model = mlflow.pyfunc.load_model(str(champion.model_dir))
    return model.predict(rows, params=champion.params or None)


# -- what the artifact holds ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["lightgbm", "als"])
def test_a_version_carries_its_own_code_and_only_real_published_requirements(champions, family):
    champion = champions[family]
    lines = (champion.model_dir / "requirements.txt").read_text().split()

    assert lines == requirements(family)
    assert [line.split("==")[0] for line in lines] == list(SERVED_PACKAGES[family])
    assert all("==" in line for line in lines)
    assert not any(line.startswith("retrain") for line in lines)
    assert (champion.model_dir / "code" / "retrain_servable.py").exists()
    code = (champion.model_dir / f"{family}_model_code.py").read_text()
    assert "import retrain_servable" in code
    assert "from registry" not in code and "import registry" not in code
    assert "from retrain" not in code


def test_the_lightgbm_signature_is_on_the_sources_raw_columns_and_types(champions):
    champion = champions["lightgbm"]
    model = Model.load(str(champion.model_dir))
    inputs = {col.name: col.type for col in model.signature.inputs.inputs}

    # the timestamp columns and the raw features; dayofyear is derived inside the model
    raw_features = ["temp", "hum", "windspeed", "workingday", "weathersit", "weekday"]
    assert list(inputs) == ["dteday", "hr", *raw_features]
    assert isinstance(inputs["dteday"], AnyType)
    assert {inputs[c].name for c in ("hr", "workingday", "weathersit", "weekday")} == {"long"}
    assert {inputs[c].name for c in ("temp", "hum", "windspeed")} == {"double"}
    assert model.signature.outputs is not None
    assert (champion.model_dir / "input_example.json").exists()


def test_the_als_signature_takes_user_ids_in_the_sources_column_or_user(champions):
    model = Model.load(str(champions["als"].model_dir))
    inputs = {col.name: col for col in model.signature.inputs.inputs}

    assert set(inputs) == {"userId", "user"}
    assert all(isinstance(c.type, AnyType) and not c.required for c in inputs.values())
    assert [c.name for c in model.signature.outputs.inputs] == [
        "user",
        "rank",
        "item",
        "score",
        "source",
    ]
    assert model.signature.params is not None
    assert (champions["als"].model_dir / "input_example.json").exists()


def test_the_derived_features_of_a_served_model_are_the_ones_training_knows():
    assert set(DERIVED) == DERIVED_FEATURES


# -- raw rows in, in this process -----------------------------------------------------------------
def test_the_runs_own_holdout_sample_scores_as_training_features_would(champions, monkeypatch):
    champion = champions["lightgbm"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion.registry.tracking_uri)
    raw = champion.holdout()  # every column of the source, as pandas reads the CSV back
    with loading_pyfunc():
        model = mlflow.pyfunc.load_model(f"models:/{champion.registry.model_name}@champion")
    served = np.asarray(model.predict(raw))

    # the same rows as training saw them: the feature cache, matched on the event time
    spec = champion.spec
    prepared = prepare(spec, as_of=pd.Timestamp(AS_OF["lightgbm"]))
    cache = FeatureCache(spec.state.features, spec).load(prepared.holdout.partitions)
    ts = pd.DataFrame({TS: parse_timestamps(raw, spec).to_numpy()})
    cached = ts.merge(cache, on=TS, how="left", validate="one_to_one")
    trainer = champion.registry.load_model(champion.version)
    assert len(served) == len(raw) > 10
    np.testing.assert_allclose(served, trainer.predict(cached[list(spec.features.columns)]))


def test_a_recommender_takes_user_ids_as_integers_or_strings(champions):
    champion = champions["als"]
    raw = champion.holdout()  # userId, movieId, rating, timestamp: the ids read as integers
    assert pd.api.types.is_integer_dtype(raw["userId"])

    as_ints = in_process(champion, raw)
    as_strings = in_process(champion, pd.DataFrame({"user": raw["userId"].astype(str)}))
    trainer = champion.registry.load_model(champion.version)
    expected = trainer.recommend([str(u) for u in raw["userId"]], k=champion.params["k"])

    pd.testing.assert_frame_equal(as_ints, expected)
    pd.testing.assert_frame_equal(as_strings, expected)
    assert set(as_ints["source"]) == {"als"}


def test_rows_missing_a_raw_column_are_refused_naming_it(champions):
    raw = champions["lightgbm"].holdout().drop(columns=["dteday"])
    with pytest.raises(Exception, match="dteday"):
        in_process(champions["lightgbm"], raw)


# -- anywhere MLflow serves -----------------------------------------------------------------------
SCRIPT = """
import importlib.util, json, sys
import mlflow.pyfunc, pandas as pd
assert importlib.util.find_spec("retrain") is None, "retrain is importable"
assert importlib.util.find_spec("registry") is None, "registry is importable"
model = mlflow.pyfunc.load_model(sys.argv[1])
params = json.loads(sys.argv[3]) or None
answer = model.predict(pd.read_csv(sys.argv[2]), params=params)
out = answer.to_dict(orient="list") if isinstance(answer, pd.DataFrame) else list(answer)
print(json.dumps(out))
"""


def as_frame_or_array(answer: Any, like: Any) -> Any:
    if isinstance(like, pd.DataFrame):
        return pd.DataFrame(answer)[list(like.columns)]
    return np.asarray(answer, dtype="float64")


# ALS scores are float32 dot products whose summation order follows the BLAS threads of the
# process: another process may differ in the last bit (1.2e-7 relative seen); a wrong model or
# a wrong derived feature differs far more
RTOL = 1e-6


def assert_same_answers(served: Any, expected: Any) -> None:
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(
            served.reset_index(drop=True), expected, check_dtype=False, rtol=RTOL
        )
    else:
        np.testing.assert_allclose(served, np.asarray(expected), rtol=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lightgbm", "als"])
def test_a_fresh_virtualenv_without_retrain_loads_the_model_and_scores_raw_rows(
    champions, env_cache, tmp_path, family
):
    champion = champions[family]
    env = model_environment(
        champion.model_dir / "requirements.txt", env_cache, time.monotonic() + 900
    )
    script = tmp_path / "score.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [
            *(str(env / "bin" / "python"), str(script), str(champion.model_dir)),
            *(str(champion.holdout_csv), json.dumps(champion.params)),
        ],
        cwd=tmp_path,  # nothing of the checkout on sys.path
        env={"PATH": f"{env / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = in_process(champion, champion.holdout())
    assert_same_answers(as_frame_or_array(json.loads(done.stdout), expected), expected)
    assert sys.prefix != str(env)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lightgbm", "als"])
def test_mlflow_models_serve_of_the_champion_answers_raw_rows_over_http(
    champions, env_cache, tmp_path, family
):
    champion = champions[family]
    deadline = time.monotonic() + 900
    env = model_environment(champion.model_dir / "requirements.txt", env_cache, deadline)
    raw = champion.holdout()

    with model_server(env, champion.model_dir, deadline, tmp_path) as (url, _):
        answer = invoke(url, raw, champion.params, timeout=60)

    expected = in_process(champion, raw)
    assert_same_answers(as_frame_or_array(answer, expected), expected)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lightgbm", "als"])
def test_infra_validation_of_a_servable_version_passes_and_records_its_cost(
    champions, env_cache, family
):
    champion = champions[family]
    check = validate_version(
        champion.registry,
        champion.version,
        champion.holdout(),
        champion.params,
        env_cache,
        900,
    )

    assert check.passed, check.reason
    assert check.rows == len(champion.holdout())
    tags = champion.registry.version(champion.version).tags
    assert tags["retrain.infra_validation"] == "passed"
    assert float(tags["retrain.infra_validation.seconds"]) == pytest.approx(check.seconds, abs=0.1)
    run = champion.registry.client.get_run(champion.registry.version(champion.version).run_id)
    assert run.data.metrics["infra_validation_seconds"] == pytest.approx(check.seconds)
