"""gate.promote_baseline through the real flow: the baseline is registered, approved, audited,
promoted and served like any version, and the simulator takes the same decision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from flows import events
from flows.retrain_flow import _decision_of, make_registry, retrain_flow
from gateway.models import Loaded, recommend_users
from registry.client import loading_pyfunc
from registry.live import load_servable
from retrain.config import load_spec
from retrain.ledger import Ledger
from retrain.promotion import Approval
from retrain.simulate import Periodic, load_replay, replay_policy
from retrain.trainers.als import ALSTrainer
from tests.conftest import als_spec_dict, bike_slice, spec_dict, taste_stream

# the spec's first replayed step: 21 days of training and 7 of holdout after 2011-03-01
FIRST_AS_OF = "2011-03-29"
NO_RETRAIN = """
import sys, json
sys.modules["retrain"] = None  # importing retrain (or registry) would fail
sys.modules["registry"] = None
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
rows = pd.read_json(sys.argv[2], orient="records")
print(json.dumps([float(v) for v in model.predict(rows)]))
"""


def write_months(
    folder: Path, bike_hourly: pd.DataFrame, shuffle_from: str | None, label: str = "cnt"
) -> Path:
    """Two months of bike data; ``label`` of the rows from ``shuffle_from`` on is shuffled (no
    feature says anything about it)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for month, (start, end) in {
        "2011-03": ("2011-03-01", "2011-04-01"),
        "2011-04": ("2011-04-01", "2011-05-01"),
    }.items():
        part = bike_slice(bike_hourly, start, end)
        if shuffle_from is not None:
            late = (pd.to_datetime(part["dteday"]) >= shuffle_from).to_numpy()
            part.loc[late, label] = rng.permutation(part.loc[late, label].to_numpy())
        part.to_csv(folder / f"{month}.csv", index=False)
    return folder


def spec_file(tmp_path: Path, data_dir: Path, **overrides: Any) -> Path:
    path = tmp_path / "spec.yaml"
    data = spec_dict(
        data_dir,
        tmp_path / "state",
        **{"gate.promote_baseline": True, "gate.refit": True, **overrides},
    )
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def sent(monkeypatch) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "emit_event", lambda **kwargs: out.append(kwargs) or kwargs)
    return out


def test_no_champion_and_a_candidate_that_lost_to_the_baseline_promotes_a_fresh_baseline(
    tmp_path: Path, bike_hourly: pd.DataFrame, sent: list[dict[str, Any]]
):
    # rmse: the training mean is the best constant (for mae it is the median)
    spec_path = spec_file(
        tmp_path, write_months(tmp_path / "data", bike_hourly, "2011-03-01"), metric="rmse"
    )

    out = retrain_flow(str(spec_path), mode="manual", as_of=FIRST_AS_OF, auto_approve=True)

    assert out["promoted"], out["decision"]
    refused, version = out["refused_candidate"], out["version"]
    assert refused is not None and int(version) == int(refused) + 1
    assert out["strategy"] == "baseline"
    assert "candidate lost to the baseline" in out["decision"]
    assert "baseline promoted" in out["decision"]
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    registry = make_registry(spec, ledger)
    assert registry.alias_version("champion") == version
    tags = registry.version(version).tags
    assert tags["retrain.kind"] == "baseline" and tags["retrain.baseline"] == "mean"
    assert tags["retrain.baseline.beaten_candidate"] == refused
    assert tags["retrain.strategy"] == "baseline" and tags["retrain.family"] == "lightgbm"
    assert tags["retrain.gate"] == "passed" and tags["retrain.approval"] == "approved"
    assert pd.Timestamp(tags["retrain.window_end"]) == pd.Timestamp(FIRST_AS_OF)  # fresh
    assert tags["retrain.data_end"] == "2011-03-28 23:00:00"
    assert "baseline promoted" in tags["retrain.decision"]
    assert registry.version(refused).tags["retrain.gate"] == "failed"
    # audit: challenger to the candidate, to the baseline, then champion to the baseline
    history = ledger.alias_history(spec.name)
    moves = [(h["alias"], h["to_version"]) for h in history]
    assert ("challenger", refused) in moves and ("champion", version) in moves
    champion_move = next(h for h in history if h["alias"] == "champion")
    assert "baseline promoted" in champion_move["reason"]
    [run] = ledger.runs(spec.name, limit=1)
    assert run.status == "promoted" and run.model_version == version
    assert run.metrics["refused_candidate"] == refused
    # the decision a suspended run takes when it resumes reads as the one taken in the run
    assert "baseline promoted" in run.metrics["baseline_promotion"]
    resumed = _decision_of(run, Approval(approved=True, approver="ann", comment="ok"))
    assert resumed.promote and resumed.reason.startswith(run.metrics["baseline_promotion"])
    assert resumed.reason.endswith("approved by ann: ok")
    # events: the candidate refused, the baseline promoted
    names = [(e["event"], e["payload"].get("version")) for e in sent]
    assert ("retrain.model.refused", refused) in names
    assert ("retrain.model.promoted", version) in names

    # served as any version: mlflow.pyfunc without retrain, raw rows in, the training mean out
    model = registry.load_model(version)
    uri = registry.client.get_model_version_download_uri(spec.name, version)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(tmp_path / "served"), tracking_uri=registry.tracking_uri
    )
    rows = bike_slice(bike_hourly, "2011-03-20", "2011-03-21").head(4)
    rows_file = tmp_path / "rows.json"
    rows.to_json(rows_file, orient="records")
    script = tmp_path / "score.py"
    script.write_text(NO_RETRAIN)
    done = subprocess.run(
        [sys.executable, str(script), local, str(rows_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == pytest.approx([model.value_] * 4)
    with loading_pyfunc():
        in_process = mlflow.pyfunc.load_model(local).predict(rows)
    assert in_process.tolist() == pytest.approx([model.value_] * 4)

    # the simulator takes the same decision at the same as-of, through the same function
    run_sim = replay_policy(spec, Periodic("weekly", pd.Timedelta(days=7)), load_replay(spec))
    first, second = run_sim.trainings[:2]
    assert first.strategy == "scratch" and not first.promoted
    assert second.strategy == "baseline" and second.promoted
    assert out["decision"].startswith(second.reason)
    assert second.data_end == pd.Timestamp(FIRST_AS_OF)


def test_flag_off_keeps_a_refused_candidate_refused_and_no_champion(
    tmp_path: Path, bike_hourly: pd.DataFrame
):
    spec_path = spec_file(
        tmp_path,
        write_months(tmp_path / "data", bike_hourly, "2011-03-01"),
        **{"gate.promote_baseline": False, "metric": "rmse"},
    )

    out = retrain_flow(str(spec_path), mode="manual", as_of=FIRST_AS_OF, auto_approve=True)

    assert not out["promoted"] and out["refused_candidate"] is None
    assert "does not beat the trivial baseline" in out["decision"]
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    assert registry.alias_version("champion") is None
    assert len(registry.versions()) == 1


def test_a_champion_that_beats_the_baseline_stays_and_one_that_loses_to_it_is_replaced(
    tmp_path: Path, bike_hourly: pd.DataFrame
):
    # true labels up to 04-08, shuffled in the training rows after it: the holdout of the
    # as-of 04-22 (04-15 .. 04-22) keeps its true labels for the first case
    data = tmp_path / "data"
    write_months(data, bike_hourly, None)
    spec_path = spec_file(tmp_path, data)
    first = retrain_flow(str(spec_path), mode="manual", as_of="2011-04-08", auto_approve=True)
    assert first["promoted"] and first["refused_candidate"] is None, first["decision"]

    days = pd.to_datetime(pd.read_csv(data / "2011-04.csv")["dteday"])
    april = pd.read_csv(data / "2011-04.csv")
    train_rows = ((days >= "2011-03-25") & (days < "2011-04-15")).to_numpy()
    rng = np.random.default_rng(3)
    april.loc[train_rows, "cnt"] = rng.permutation(april.loc[train_rows, "cnt"].to_numpy())
    march = pd.read_csv(data / "2011-03.csv")
    mdays = pd.to_datetime(march["dteday"])
    late = (mdays >= "2011-03-25").to_numpy()
    march.loc[late, "cnt"] = rng.permutation(march.loc[late, "cnt"].to_numpy())
    march.to_csv(data / "2011-03.csv", index=False)
    april.to_csv(data / "2011-04.csv", index=False)

    kept = retrain_flow(str(spec_path), mode="manual", as_of="2011-04-22", auto_approve=True)

    assert not kept["promoted"] and kept["refused_candidate"] is None, kept["decision"]
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    assert registry.alias_version("champion") == first["version"]

    # now the holdout is noise too: the champion's structure is gone, the baseline beats it
    hold = ((days >= "2011-04-15") & (days < "2011-04-29")).to_numpy()
    april.loc[hold, "cnt"] = rng.permutation(april.loc[hold, "cnt"].to_numpy())
    april.to_csv(data / "2011-04.csv", index=False)
    replaced = retrain_flow(str(spec_path), mode="manual", as_of="2011-04-29", auto_approve=True)

    assert replaced["promoted"], replaced["decision"]
    assert replaced["strategy"] == "baseline"
    assert f"champion v{first['version']}" in replaced["decision"]
    assert replaced["previous_champion"] == first["version"]
    assert registry.alias_version("champion") == replaced["version"]
    assert registry.alias_version("previous") == first["version"]

    # the next incremental retrain after a baseline champion trains from scratch and is judged
    # against the baseline champion
    after = retrain_flow(
        str(spec_path), mode="stateful", as_of="2011-05-01", auto_approve=True, force=True
    )
    assert after["status"] != "skipped", after["decision"]
    tags = registry.version(after["version"]).tags
    assert tags["retrain.strategy"] in {"scratch", "baseline"}
    assert tags["retrain.champion_at_training"] == replaced["version"]
    assert after["champion"] is not None


def test_an_als_candidate_that_lost_to_popularity_leaves_a_popularity_champion_that_serves(
    tmp_path: Path, monkeypatch
):
    # a broken recommender: it recommends items nobody ever rated, so popularity beats it
    def nothing(self, user_ids, k=10, filter_seen=True):
        users = [str(u) for u in user_ids]
        return pd.DataFrame(
            {
                "user": np.repeat(users, k),
                "rank": np.tile(np.arange(1, k + 1), len(users)),
                "item": [f"none-{i}" for i in range(k)] * len(users),
                "score": np.zeros(k * len(users)),
                "source": "als",
            }
        )

    monkeypatch.setattr(ALSTrainer, "recommend", nothing)
    source = tmp_path / "ratings.csv"
    taste_stream().to_csv(source, index=False)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            als_spec_dict(
                source,
                tmp_path / "state",
                **{"gate.promote_baseline": True, "gate.refit": True},
            )
        )
    )

    out = retrain_flow(str(spec_path), mode="manual", as_of="2024-02-07", auto_approve=True)

    assert out["promoted"] and out["strategy"] == "baseline", out["decision"]
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    version = registry.alias_version("champion")
    assert version == out["version"]
    tags = registry.version(version).tags
    assert tags["retrain.baseline"] == "popularity" and tags["retrain.family"] == "als"
    # `retrain recommend` and the gateway answer from it
    model = registry.load_model(version)
    recs = model.recommend(["4", "nobody"], k=3)
    assert len(recs) == 6 and set(recs["source"]) == {"popularity"}
    assert model.popularity_window == pd.Timedelta(spec.als.popularity_window)
    answer = recommend_users(Loaded(version, load_servable(registry, version)), ["4", 5], 3)
    assert [len(a["items"]) for a in answer] == [3, 3]
    assert answer[0]["items"] == recs.loc[recs["user"] == "4", "item"].tolist()

    # the next fold-in run after a popularity champion recomputes, judged against it
    after = retrain_flow(str(spec_path), mode="stateful", auto_approve=True)
    assert after["status"] != "skipped", after["decision"]
    tags = registry.version(after.get("refused_candidate") or after["version"]).tags
    assert tags["retrain.strategy"] == "scratch"
    assert "popularity baseline" in tags["retrain.strategy_reason"]
    assert after["champion"] is not None


def test_a_multiclass_candidate_that_lost_to_the_class_priors_promotes_a_servable_baseline(
    tmp_path: Path, bike_hourly: pd.DataFrame
):
    # the weather situation with its labels shuffled: no feature says anything about it, so
    # the candidate's log loss is worse than the class priors' and there is no champion (March
    # and April 2011 hold no heavy rain: classes 1-3)
    folder = write_months(tmp_path / "data", bike_hourly, "2011-03-01", label="weathersit")
    spec_path = spec_file(
        tmp_path,
        folder,
        task="multiclass",
        classes=[1, 2, 3],
        metric="multi_logloss",
        label="weathersit",
        **{
            "features.numeric": ["temp", "hum", "windspeed", "hr", "cnt"],
            "features.categorical": ["weekday"],
            "features.leakage": ["casual", "registered", "instant"],
        },
    )

    out = retrain_flow(str(spec_path), mode="manual", as_of=FIRST_AS_OF, auto_approve=True)

    assert out["promoted"], out["decision"]
    assert out["strategy"] == "baseline" and "baseline promoted" in out["decision"]
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    version = out["version"]
    assert registry.alias_version("champion") == version
    assert registry.version(version).tags["retrain.baseline"] == "class_priors"
    # served through pyfunc as a multiclass booster is: the class labels, or with their
    # probabilities, the training window's class priors
    uri = registry.client.get_model_version_download_uri(spec.name, version)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(tmp_path / "served"), tracking_uri=registry.tracking_uri
    )
    rows = bike_slice(bike_hourly, "2011-03-20", "2011-03-21").head(4)
    with loading_pyfunc():
        pyfunc = mlflow.pyfunc.load_model(local)
        labels = pyfunc.predict(rows)
        answer = pyfunc.predict(rows, params={"probabilities": True})
    assert set(labels.tolist()) <= {1, 2, 3} and len(set(labels.tolist())) == 1
    priors = answer[["probability_1", "probability_2", "probability_3"]].iloc[0]
    assert priors.sum() == pytest.approx(1.0) and (priors > 0).all()
    # the gate scores the promoted baseline champion as it was judged (rows x classes)
    champion = registry.load_model(version)
    assert champion.predict(rows).shape == (4, 3)
