# ruff: noqa: F811  (the gateway fixtures are imported, then requested by name)
"""The online evaluation end to end: `retrain gateway` serves real requests, feedback comes back
over HTTP, and the live-evaluate flow (real Prefect) promotes a truly better challenger, rolls a
worse one back, and turns labelled answers into the next training data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.live_flow import live_evaluate_flow
from flows.retrain_flow import retrain_flow
from registry.cards import read_card
from registry.client import APPROVAL_TAG, GATE_TAG
from registry.live import LIVE_TAG
from tests.conftest import bike_slice, spec_dict
from tests.flows.conftest import artifacts_of, run_flow
from tests.flows.test_links_and_cards import model_events
from tests.gateway.conftest import (  # noqa: F401  (fixtures)
    gateway,
    gw_ledger,
    gw_tracking_uri,
    make_als_models,
    make_models,
    source_rows,
    train_frame,
    write_als_spec,
    write_spec,
)

pytestmark = pytest.mark.slow


def wait_logged(ledger, model: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and ledger.prediction_count(model) < count:
        time.sleep(0.2)
    assert ledger.prediction_count(model) >= count


def serve_and_label(client: httpx.Client, name: str, frame: pd.DataFrame) -> int:
    """One request per row, then its true count as feedback; returns the answers."""
    for row, label in zip(source_rows(frame), frame["cnt"], strict=True):
        answer = client.post(f"/models/{name}/predict", json={"rows": [row]})
        assert answer.status_code == 200, answer.text
        rid = answer.json()["request_id"]
        fb = client.post(
            "/feedback", json={"request_id": rid, "label": float(label), "model": name}
        )
        assert fb.status_code == 202
    return len(frame)


def test_online_evaluation_promotes_a_better_challenger_and_rolls_back_a_worse_one(
    make_models, gateway, tmp_path: Path, bike_hourly, gw_ledger
):
    better = make_models()
    weak = better.add(rounds=3, leaves=4)
    better.promote(weak)
    strong = better.add(rounds=80)
    worse = make_models()
    kept = worse.add(rounds=80)
    worse.promote(kept)
    bad = worse.add(rounds=2, leaves=2)
    live = {"routing": "shadow", "required": "shadow", "min_samples": 100}
    spec_better = write_spec(tmp_path, better, live)
    spec_worse = write_spec(tmp_path, worse, live)
    gw = gateway(spec_better, spec_worse)
    unseen = bike_slice(bike_hourly, "2011-04-01", "2011-04-09")  # after the training month
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        n = serve_and_label(client, better.registry.model_name, unseen)
        serve_and_label(client, worse.registry.model_name, unseen)
    wait_logged(gw_ledger, better.registry.model_name, 2 * n)
    wait_logged(gw_ledger, worse.registry.model_name, 2 * n)
    time.sleep(0.5)  # the last feedback rows

    promoted, promoted_run = run_flow(live_evaluate_flow, str(spec_better))
    assert promoted["status"] == "promoted", promoted["decision"]
    assert promoted["evidence"]["samples"] == n
    assert better.registry.alias_version("champion") == strong
    assert better.registry.alias_version("previous") == weak
    tags = better.registry.version(strong).tags
    assert tags[GATE_TAG] == "passed" and tags[APPROVAL_TAG] == "approved"
    assert tags[LIVE_TAG].startswith("promote: challenger better")
    card = read_card(better.registry, strong)  # the live verdict is on the card in MLflow
    assert "- promoted to champion" in card and "(after the live shadow test)" in card
    assert "- approved or rejected by: online-evaluation" in card and "- decided at: " in card
    moves = [
        h for h in gw_ledger.alias_history(better.registry.model_name) if h["alias"] == "champion"
    ]
    assert moves[-1]["to_version"] == strong and moves[-1]["actor"] == "online-evaluation"

    rolled, rolled_run = run_flow(live_evaluate_flow, str(spec_worse))
    assert rolled["status"] == "rolled back", rolled["decision"]
    # both decisions are model events, as a backtest promotion's are
    [up] = model_events(promoted_run)
    assert up["event"] == "retrain.model.promoted"
    assert up["resource"]["prefect.resource.id"] == f"retrain.model.{better.registry.model_name}"
    assert (up["payload"]["version"], up["payload"]["previous"]) == (strong, weak)
    assert up["payload"]["routing"] == "shadow"
    [down] = model_events(rolled_run)
    assert down["event"] == "retrain.model.refused"
    assert down["payload"]["version"] == bad and "challenger worse" in down["payload"]["reason"]
    assert worse.registry.alias_version("champion") == kept
    assert worse.registry.alias_version("challenger") is None
    tags = worse.registry.version(bad).tags
    assert tags[GATE_TAG] == "failed" and "challenger worse" in tags["retrain.decision"]
    runs = {r.model: r for r in gw_ledger.runs(limit=10)}
    assert runs[worse.registry.model_name].status == "rejected"
    assert runs[better.registry.model_name].status == "promoted"
    assert runs[better.registry.model_name].mode == "live-shadow"

    # the gateway follows the registry: new champion, no challenger left in either model
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready = httpx.get(f"{gw.url}/readyz").json()["models"]
        if ready[better.registry.model_name]["champion"] == strong and all(
            m["challenger"] is None for m in ready.values()
        ):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"the gateway did not follow the aliases: {ready}")


def test_interleaving_promotes_the_recommender_whose_items_get_clicked(
    make_als_models, gateway, tmp_path: Path, gw_ledger
):
    """ALS through the gateway: team-draft interleaved lists over HTTP, clicks on the items a
    user truly likes (taste_stream's plan) as feedback, and the evaluation promotes the model
    that learned the tastes over one that was fitted with the users shuffled."""
    models = make_als_models()
    blind = models.add(rounds=10, shuffled=True)
    models.promote(blind)
    sighted = models.add(rounds=10)
    name = models.registry.model_name
    live = {"routing": "interleave", "required": "interleave", "min_samples": 40}
    gw = gateway(write_als_spec(tmp_path, models, live))
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for n in range(90):
            user = str(n)
            taste = 100 + 20 * (n % 3)
            answer = client.post(f"/models/{name}/recommend", json={"users": [user], "k": 5})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["arm"] == "interleaved" and body["version"] == f"{blind}|{sighted}"
            [listed], [teams] = body["recommendations"], body["teams"]
            assert len(teams) == len(listed["items"]) == 5
            assert set(teams) <= {"champion", "challenger"}
            liked = [i for i in listed["items"] if taste <= int(i) < taste + 20]
            fb = client.post(
                "/feedback",
                json={"request_id": body["request_id"], "clicks": liked, "model": name},
            )
            assert fb.status_code == 202
    wait_logged(gw_ledger, name, 90)
    time.sleep(0.5)  # the last feedback rows

    result, _ = run_flow(live_evaluate_flow, str(write_als_spec(tmp_path, models, live)))

    assert result["status"] == "promoted", result["decision"]
    assert models.registry.alias_version("champion") == sighted
    assert models.registry.alias_version("previous") == blind
    assert result["evidence"]["test"].startswith("team-draft interleaving")
    assert result["evidence"]["effect"] > 0 and result["evidence"]["samples"] >= 40


def test_a_continuing_test_changes_nothing(make_models, gateway, tmp_path: Path, train_frame):
    models = make_models()
    models.promote(models.add(rounds=5))
    challenger = models.add(rounds=20)
    spec = write_spec(tmp_path, models, {"routing": "canary", "min_samples": 100})
    result, run_id = run_flow(live_evaluate_flow, str(spec))
    assert result["status"] == "continue" and "0 labelled requests" in result["decision"]
    assert models.registry.alias_version("challenger") == challenger
    # the evidence on the flow run: the markdown, the per-arm table and the plot
    key = models.registry.model_name.lower()
    [plot] = artifacts_of(run_id, f"{key}-live-plot")
    assert plot.type == "image" and str(plot.data).startswith("data:image/png;base64,")
    assert artifacts_of(run_id, f"{key}-live-test") and artifacts_of(run_id, f"{key}-live-arms")


def test_live_evaluate_on_the_command_line_runs_the_same_evaluation(make_models, tmp_path: Path):
    models = make_models()
    models.promote(models.add(rounds=5))
    challenger = models.add(rounds=20)
    spec = write_spec(tmp_path, models, {"routing": "canary", "min_samples": 100})

    result = CliRunner().invoke(app, ["live-evaluate", "--spec", str(spec)])

    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"{models.registry.model_name}: continue:" in out
    assert "0 labelled requests" in out
    assert f"challenger v{challenger}: 0 answer(s), 0 labelled" in out
    assert models.registry.alias_version("challenger") == challenger


def test_live_evaluate_refuses_a_bad_spec_with_one_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfamily: nope\n")

    result = CliRunner().invoke(app, ["live-evaluate", "--spec", str(bad)])

    assert result.exit_code == 3  # a bad spec (docs/cli.md)
    assert "error:" in result.output and "Traceback" not in result.output


def test_labelled_answers_become_the_next_training_data(
    make_models, gateway, tmp_path: Path, bike_hourly, gw_ledger
):
    """served -> labelled -> retrained: raw source rows go through the gateway, their counts
    come back as feedback, the evaluation exports them, and a retrain trains on exactly them."""
    models = make_models()
    models.promote(models.add(rounds=5))
    labelled = tmp_path / "labelled"
    spec = write_spec(tmp_path, models, {"labelled_dir": str(labelled)})
    gw = gateway(spec)
    month = bike_slice(bike_hourly, "2011-03-01", "2011-03-29")
    raw = json.loads(month.drop(columns=["cnt"]).to_json(orient="records"))
    for row in raw:
        row["weathersit"] = str(row["weathersit"])
    name = models.registry.model_name
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for start in range(0, len(raw), 24):
            answer = client.post(f"/models/{name}/predict", json={"rows": raw[start : start + 24]})
            assert answer.status_code == 200, answer.text
            labels = [float(v) for v in month["cnt"].iloc[start : start + 24]]
            rid = answer.json()["request_id"]
            client.post("/feedback", json={"request_id": rid, "labels": labels, "model": name})
    wait_logged(gw_ledger, name, -(-len(raw) // 24))
    time.sleep(0.5)

    result, _ = run_flow(live_evaluate_flow, str(spec))
    assert result["labelled"] == len(month)
    exported = pd.concat(pd.read_parquet(p) for p in sorted(labelled.glob("*.parquet")))
    assert sorted(exported["cnt"]) == sorted(month["cnt"].astype(float))

    retrain_spec = tmp_path / "from-feedback.yaml"
    data = spec_dict(labelled, tmp_path / "state2", name=f"{name}-next")
    data["source"]["format"] = "parquet"
    data["state"]["tracking_uri"] = models.registry.tracking_uri
    data["state"]["ledger_url"] = gw_ledger.url
    retrain_spec.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
    outcome, _ = run_flow(retrain_flow, str(retrain_spec), auto_approve=True)
    assert outcome["status"] == "promoted", outcome["decision"]
    run = gw_ledger.run(outcome["run_id"])
    assert run.data_version == outcome["data_version"]
