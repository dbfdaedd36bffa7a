"""`retrain gateway` as a process on a real port, against a real MLflow registry, over HTTP."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import source_rows, write_als_spec, write_spec

pytestmark = pytest.mark.slow


def wait_logged(ledger, model: str, count: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = ledger.prediction_count(model)
        if n >= count:
            return n
        time.sleep(0.2)
    return ledger.prediction_count(model)


def test_shadow_answers_with_the_champion_and_logs_both_arms(
    make_models, gateway, tmp_path: Path, train_frame, gw_ledger
):
    models = make_models()
    champion = models.add(rounds=5)
    models.promote(champion)
    challenger = models.add(rounds=30)
    name = models.registry.model_name
    gw = gateway(write_spec(tmp_path, models, {"routing": "shadow"}))
    rows = source_rows(train_frame.head(40))
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        ready = client.get("/readyz").json()
        assert ready["models"][name]["champion"] == champion
        assert ready["models"][name]["challenger"] == challenger
        answers = [client.post(f"/models/{name}/predict", json={"rows": [r]}) for r in rows]
        assert {a.status_code for a in answers} == {200}
        assert {(a.json()["version"], a.json()["arm"]) for a in answers} == {(champion, "champion")}
        assert all(len(a.json()["predictions"]) == 1 for a in answers)
        assert client.get("/healthz").json() == {"status": "ok"}
        metrics = client.get("/metrics").text
    assert (
        f'retrain_gateway_requests_total{{arm="champion",endpoint="predict",model="{name}",'
        f'version="{champion}"}} 40.0' in metrics
    )
    assert "retrain_gateway_latency_seconds_bucket" in metrics
    assert wait_logged(gw_ledger, name, 80) == 80
    logged = gw_ledger.predictions(name, with_inputs=True)
    roles = Counter((p["arm"], p["role"], p["version"]) for p in logged)
    assert roles == {("champion", "served", champion): 40, ("challenger", "shadow", challenger): 40}
    first = [p for p in logged if p["request_id"] == answers[0].json()["request_id"]]
    assert {p["arm"] for p in first} == {"champion", "challenger"}
    assert first[0]["inputs"] == {"rows": [rows[0]]}


def test_canary_is_sticky_per_key_and_takes_its_share(
    make_models, gateway, tmp_path: Path, train_frame
):
    models = make_models()
    models.promote(models.add(rounds=5))
    challenger = models.add(rounds=10)
    name = models.registry.model_name
    gw = gateway(write_spec(tmp_path, models, {"routing": "canary", "share": 0.3}))
    row = source_rows(train_frame.head(1))
    with httpx.Client(base_url=gw.url, timeout=30) as client:

        def arm(key: str) -> str:
            body = {"rows": row, "key": key}
            return client.post(f"/models/{name}/predict", json=body).json()["arm"]

        arms = {f"user-{i}": arm(f"user-{i}") for i in range(300)}
        again = {key: arm(key) for key in list(arms)[:50]}
        answer = client.post(f"/models/{name}/predict", json={"rows": row, "key": "user-1"})
    assert all(arms[k] == again[k] for k in again)  # sticky
    share = sum(a == "challenger" for a in arms.values()) / len(arms)
    assert 0.2 < share < 0.4
    if arms["user-1"] == "challenger":
        assert answer.json()["version"] == challenger


def test_bad_requests_get_a_clear_error_not_a_traceback(make_models, gateway, tmp_path: Path):
    models = make_models()
    models.promote(models.add(rounds=5))
    name = models.registry.model_name
    gw = gateway(write_spec(tmp_path, models, {}))
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        missing = client.post("/models/nope/predict", json={"rows": [{}]})
        assert missing.status_code == 404 and name in missing.json()["error"]
        empty = client.post(f"/models/{name}/predict", json={"rows": []})
        assert empty.status_code == 400 and "non-empty list" in empty.json()["error"]
        wrong = client.post(f"/models/{name}/recommend", json={"users": ["1"]})
        assert wrong.status_code == 400 and f"/models/{name}/predict" in wrong.json()["error"]
        unscorable = client.post(f"/models/{name}/predict", json={"rows": [{"temp": 0.3}]})
        assert unscorable.status_code == 422 and "cannot score it" in unscorable.json()["error"]
        assert "Traceback" not in unscorable.text
        notjson = client.post(
            f"/models/{name}/predict", content=b"{", headers={"content-type": "application/json"}
        )
        assert notjson.status_code == 400 and "not JSON" in notjson.json()["error"]
        nofb = client.post("/feedback", json={"label": 3})
        assert nofb.status_code == 400 and "request_id" in nofb.json()["error"]


def test_an_alias_moved_under_load_swaps_without_dropping_a_request(
    make_models, gateway, tmp_path: Path, train_frame, gw_ledger
):
    models = make_models()
    first = models.add(rounds=5)
    models.promote(first)
    second = models.add(rounds=15)
    name = models.registry.model_name
    gw = gateway(write_spec(tmp_path, models, {}))
    rows = source_rows(train_frame.head(20))
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                r = client.post(f"/models/{name}/predict", json={"rows": [rows[i % 20]]})
                seen.append((r.status_code, r.json().get("version")))
                i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    models.promote(second)  # the champion alias moves while requests flow
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not seen or seen[-1][1] != second):
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert {code for code, _ in seen} == {200}
    versions = [v for _, v in seen]
    assert versions[0] == first and versions[-1] == second
    switched = versions.index(second)
    assert set(versions[switched + 50 :]) <= {second}  # three clients: a few stragglers only
    assert wait_logged(gw_ledger, name, len(seen)) == len(seen)


def test_a_restart_under_load_loses_no_logged_prediction(
    make_models, gateway, tmp_path: Path, train_frame, gw_ledger
):
    """SIGTERM while clients send: uvicorn finishes the answers in flight and the log drains;
    a new process takes over on the same port. Every 200 answer is in the ledger, once."""
    models = make_models()
    models.promote(models.add(rounds=5))
    name = models.registry.model_name
    spec = write_spec(tmp_path, models, {})
    gw = gateway(spec)
    rows = source_rows(train_frame.head(10))
    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                try:
                    r = client.post(f"/models/{name}/predict", json={"rows": [rows[i % 10]]})
                except httpx.HTTPError:
                    time.sleep(0.05)  # the gateway is restarting
                    continue
                if r.status_code == 200:
                    answered.append(r.json()["request_id"])
                i += 1

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(2)
    before = len(answered)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -15)
    # uvicorn drains, then re-raises the SIGTERM: the CLI exits 143 (docs/cli.md)
    assert gw.stop(signal.SIGTERM) in (0, 143, -signal.SIGTERM)
    gw.start()  # same port
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    assert before > 0 and len(answered) > before  # served before and after the restart
    gw.stop(signal.SIGTERM)
    logged = gw_ledger.predictions(name)
    assert len(logged) == len(answered)
    assert {p["request_id"] for p in logged} == set(answered)


def test_a_killed_gateway_comes_back_serving_the_current_champion(
    make_models, gateway, tmp_path: Path, train_frame
):
    models = make_models()
    models.promote(models.add(rounds=5))
    name = models.registry.model_name
    gw = gateway(write_spec(tmp_path, models, {}))
    second = models.add(rounds=8)
    gw.stop(signal.SIGKILL)
    models.promote(second)  # moved while no gateway ran
    gw.start()
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        r = client.post(f"/models/{name}/predict", json={"rows": source_rows(train_frame.head(1))})
    assert r.status_code == 200 and r.json()["version"] == second


def test_feedback_is_stored_by_request_id(
    make_models, gateway, tmp_path: Path, train_frame, gw_ledger
):
    models = make_models()
    models.promote(models.add(rounds=5))
    name = models.registry.model_name
    gw = gateway(write_spec(tmp_path, models, {}))
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        r = client.post(f"/models/{name}/predict", json={"rows": source_rows(train_frame.head(2))})
        rid = r.json()["request_id"]
        fb = client.post("/feedback", json={"request_id": rid, "labels": [3, 4], "model": name})
    assert fb.status_code == 202 and fb.json() == {"accepted": 1}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not gw_ledger.feedback([rid]):
        time.sleep(0.2)
    assert gw_ledger.feedback([rid])[0]["outcome"] == {"labels": [3, 4]}


def test_als_recommends_through_the_gateway_for_string_and_integer_ids(
    make_als_models, gateway, tmp_path: Path
):
    models = make_als_models()
    champion = models.add(rounds=10)
    models.promote(champion)
    name = models.registry.model_name
    gw = gateway(write_als_spec(tmp_path, models, {}))
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        answer = client.post(
            f"/models/{name}/recommend", json={"users": ["3", 4, "nobody"], "k": 5}
        )
        wrong = client.post(f"/models/{name}/predict", json={"rows": [{"user": "3"}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["version"], body["arm"]) == (champion, "champion")
    lists = {r["user"]: r["items"] for r in body["recommendations"]}
    assert set(lists) == {"3", "4", "nobody"}
    assert all(len(items) == 5 and len(set(items)) == 5 for items in lists.values())
    in_process = models.registry.load_model(champion).recommend(["3", "4"], k=5)
    for user in ("3", "4"):
        assert lists[user] == list(in_process.loc[in_process["user"] == user, "item"].astype(str))
    # user 3 likes items 100-119 (taste_stream's plan), user 4 items 120-139
    assert sum(100 <= int(i) < 120 for i in lists["3"]) >= 3
    assert sum(120 <= int(i) < 140 for i in lists["4"]) >= 3
    assert wrong.status_code == 400 and f"/models/{name}/recommend" in wrong.json()["error"]


def test_the_bandit_moves_traffic_to_the_arm_that_earns_more(
    make_models, gateway, tmp_path: Path, bike_hourly, gw_ledger
):
    from tests.conftest import bike_slice

    models = make_models()
    models.promote(models.add(rounds=2, leaves=2))
    strong = models.add(rounds=80)
    name = models.registry.model_name
    gw = gateway(write_spec(tmp_path, models, {"routing": "bandit", "floor": 0.05}))
    unseen = bike_slice(bike_hourly, "2011-04-01", "2011-04-30")
    rows, labels = source_rows(unseen), unseen["cnt"].tolist()
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        first = client.get("/readyz").json()["models"][name]["share"]
        for row, label in zip(rows[:200], labels[:200], strict=True):
            r = client.post(f"/models/{name}/predict", json={"rows": [row]})
            assert r.status_code == 200
            rid = r.json()["request_id"]
            client.post("/feedback", json={"request_id": rid, "label": label, "model": name})
        wait_logged(gw_ledger, name, 200)
        deadline = time.monotonic() + 30
        share = first
        # the share moves as the gateway joins the feedback: wait for its cap (1 - floor)
        while time.monotonic() < deadline:
            share = client.get("/readyz").json()["models"][name]["share"]
            if share == pytest.approx(0.95):
                break
            time.sleep(0.5)
        later = [
            client.post(f"/models/{name}/predict", json={"rows": [row]}).json()
            for row in rows[200:400]
        ]
        metrics = client.get("/metrics").text
    assert 0.05 <= first <= 0.95
    assert share == pytest.approx(0.95), f"the bandit kept share {share}"
    arms = Counter(a["arm"] for a in later)
    assert len(later) == 200 and arms["challenger"] >= 160, arms  # 95% expected
    assert {a["version"] for a in later if a["arm"] == "challenger"} == {strong}
    assert f'retrain_gateway_challenger_share{{model="{name}"}} 0.95' in metrics


def test_als_shadow_and_canary_route_recommendations_like_predictions(
    make_als_models, gateway, tmp_path: Path, gw_ledger
):
    shadowed, canaried = make_als_models(), make_als_models()
    for models in (shadowed, canaried):
        models.promote(models.add(rounds=5))
        models.add(rounds=10, leaves=4)
    gw = gateway(
        write_als_spec(tmp_path, shadowed, {"routing": "shadow"}),
        write_als_spec(tmp_path, canaried, {"routing": "canary", "share": 0.5}),
    )
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        shadow = [
            client.post(
                f"/models/{shadowed.registry.model_name}/recommend", json={"users": [str(u)]}
            ).json()
            for u in range(30)
        ]
        canary = [
            client.post(
                f"/models/{canaried.registry.model_name}/recommend", json={"users": [str(u)]}
            ).json()
            for u in range(60)
        ]
        again = client.post(
            f"/models/{canaried.registry.model_name}/recommend", json={"users": ["7"]}
        ).json()
    assert {a["arm"] for a in shadow} == {"champion"}
    assert wait_logged(gw_ledger, shadowed.registry.model_name, 60) == 60
    roles = Counter(
        (p["arm"], p["role"]) for p in gw_ledger.predictions(shadowed.registry.model_name)
    )
    assert roles == {("champion", "served"): 30, ("challenger", "shadow"): 30}
    arms = Counter(a["arm"] for a in canary)
    assert 15 <= arms["challenger"] <= 45, arms  # share 0.5 of 60, sticky per user
    assert again["arm"] == canary[7]["arm"]  # the routing key of recommend is the first user
