"""Benchmark: single-row LightGBM predictions and top-10 ALS recommendations through
`retrain gateway` (routing off, shadow, canary) beside `mlflow models serve` of the same
champion, in the same run: every server is up at once and the load alternates between them in
``--blocks`` blocks, so the shared machine's changing load hits all alike; then a lossless run:
N requests with a gateway restart in the middle, every answered request counted in the ledger.

    .venv/bin/python bench/gateway.py --requests 2000 --concurrency 4 --lossless 100000

Writes bench/results/gateway.json and gateway.md. Sized to run in a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from registry import CandidateRecord, ModelRegistry  # noqa: E402
from registry.client import GATE_TAG  # noqa: E402
from retrain.ledger import Ledger  # noqa: E402
from retrain.promotion import automatic_approval, decide  # noqa: E402
from retrain.trainers import ALSTrainer, LightGBMTrainer  # noqa: E402

BIN = Path(sys.executable).parent
BIKE = ROOT / "retrain/demo/data/bike_sharing_hourly/hour.csv"
MOVIELENS = ROOT / "retrain/demo/data/movielens_latest_small/ratings.csv"
FEATURES = ["temp", "atemp", "hum", "windspeed", "hr", "workingday", "weathersit", "weekday"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def promote(registry: ModelRegistry, version: str) -> None:
    d = decide(
        version=version,
        gate_passed=True,
        gate_reasons=("bench",),
        approval=automatic_approval("bench"),
    )
    registry.record_decision(d)
    registry.promote(d, actor="bench")


def register(registry: ModelRegistry, model_dir: Path, sample: pd.DataFrame, family: str) -> str:
    return registry.register_candidate(
        CandidateRecord(
            model_dir=model_dir,
            description="bench",
            params={},
            metrics={},
            version_tags={GATE_TAG: "passed"},
            sample=sample,
            family=family,
            predict_params={"k": 10} if family == "als" else None,
        ),
        actor="bench",
    )


def setup(work: Path, tracking: str, ledger: Ledger) -> tuple[str, str, list[dict], list[str]]:
    bike = pd.read_csv(BIKE)
    train = bike[bike["dteday"] < "2011-07-01"]
    X = train[FEATURES].assign(
        weathersit=train["weathersit"].astype(str), weekday=train["weekday"].astype(str)
    )
    lgb = ModelRegistry(tracking, "bench-lgbm", ledger, artifact_root=work / "artifacts")
    for i, rounds in enumerate((200, 250)):
        trainer = LightGBMTrainer(num_boost_round=rounds, categorical=["weathersit", "weekday"])
        v = register(
            lgb, trainer.fit(X, train["cnt"]).save(work / f"lgbm{i}"), X.head(5), "lightgbm"
        )
        if i == 0:
            promote(lgb, v)
    ratings = pd.read_csv(MOVIELENS)
    inter = pd.DataFrame(
        {
            "user": ratings["userId"].astype(str),
            "item": ratings["movieId"].astype(str),
            "weight": ratings["rating"],
            "ts": pd.to_datetime(ratings["timestamp"], unit="s"),
        }
    )
    als = ModelRegistry(tracking, "bench-als", ledger, artifact_root=work / "artifacts")
    for i, factors in enumerate((64, 48)):
        trainer = ALSTrainer(factors=factors, iterations=10).fit(inter)
        sample = pd.DataFrame({"user": inter["user"].unique()[:5]})
        v = register(als, trainer.save(work / f"als{i}"), sample, "als")
        if i == 0:
            promote(als, v)
    test = bike[bike["dteday"] >= "2011-07-01"].head(500)
    rows = json.loads(
        test[FEATURES]
        .assign(weathersit=test["weathersit"].astype(str), weekday=test["weekday"].astype(str))
        .to_json(orient="records")
    )
    users = sorted(inter["user"].unique())
    return lgb.model_name, als.model_name, rows, users


def spec_file(work: Path, name: str, family: str, tracking: str, ledger: str, routing: str) -> Path:
    data: dict[str, Any] = {
        "name": name,
        "family": family,
        "source": {"kind": "files", "path": str(work)},
        "timestamp": {"column": "dteday"},
        "live": {"routing": routing, "share": 0.05, "poll": "30s"},
        "state": {"dir": str(work / "state"), "tracking_uri": tracking, "ledger_url": ledger},
    }
    if family == "als":
        data.update(interactions={"user": "userId", "item": "movieId", "weight": "rating"})
        data["timestamp"] = {"column": "timestamp", "format": "s"}
    else:
        data.update(label="cnt", features={"numeric": FEATURES[:6], "categorical": FEATURES[6:]})
    path = work / f"{name}-{routing}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def gateway_command(port: int, *specs: Path) -> list[str]:
    """`retrain gateway` on ``port`` serving ``specs``."""
    cmd = [str(BIN / "retrain"), "gateway", "--port", str(port)]
    for spec in specs:
        cmd += ["--spec", str(spec)]
    return cmd


def wait(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready in {timeout} s")


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def load(url: str, bodies: list[dict], concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    chunks = [bodies[i::concurrency] for i in range(concurrency)]

    def run(chunk: list[dict]) -> None:
        nonlocal errors
        with httpx.Client(timeout=60) as client:
            for body in chunk:
                t = time.perf_counter()
                r = client.post(url, json=body)
                ms = (time.perf_counter() - t) * 1000
                with lock:
                    latencies.append(ms)
                    errors += r.status_code != 200

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(run, chunks))
    wall = time.perf_counter() - t0
    return {
        "requests": len(bodies),
        "errors": errors,
        "rps": len(bodies) / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "latencies": latencies,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=5, help="alternating load blocks per server")
    ap.add_argument("--lossless", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/gateway.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    ledger_url = f"sqlite:///{work / 'ledger.db'}"
    ledger = Ledger(ledger_url)
    ledger.migrate()
    lgb, als, rows, users = setup(work, tracking, ledger)
    rng = np.random.default_rng(0)
    predict = [
        {"rows": [rows[i % len(rows)]], "key": str(uuid.uuid4())} for i in range(args.requests)
    ]
    recommend = [{"users": [str(u)], "k": 10} for u in rng.choice(users, args.requests)]
    # Every server is up at once and the load alternates between them in blocks, so a change
    # of the shared machine's load hits all of them alike: the ratios are measured in one run.
    servers: list[tuple[str, str, str, Any]] = []  # (server, kind, url, make body)
    processes: list[subprocess.Popen] = []
    try:
        for routing in ("off", "shadow", "canary"):
            port = free_port()
            log = work / f"gateway-{routing}.log"
            cmd = gateway_command(
                port,
                spec_file(work, lgb, "lightgbm", tracking, ledger_url, routing),
                spec_file(work, als, "als", tracking, ledger_url, routing),
            )
            processes.append(start(cmd, log))
            wait(f"http://127.0.0.1:{port}/readyz", processes[-1], log)
            for name, kind in ((lgb, "predict"), (als, "recommend")):
                url = f"http://127.0.0.1:{port}/models/{name}/{kind}"
                servers.append((f"gateway ({routing})", kind, url, lambda b: b))
        # mlflow models serve execs `uvicorn` from PATH: the venv's bin must be on it
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for name, kind in ((lgb, "predict"), (als, "recommend")):
            port = free_port()
            log = work / f"mlflow-{kind}.log"
            command = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion"]
            command += ["-p", str(port), "--env-manager", "local", "-w", "1"]
            processes.append(start(command, log, env))
            wait(f"http://127.0.0.1:{port}/ping", processes[-1], log)
            body = (
                (lambda b: {"dataframe_records": b["rows"]})
                if kind == "predict"
                else (
                    lambda b: {"dataframe_records": [{"user": b["users"][0]}], "params": {"k": 10}}
                )
            )
            servers.append(
                ("mlflow models serve", kind, f"http://127.0.0.1:{port}/invocations", body)
            )
        bodies = {"predict": predict, "recommend": recommend}
        for _, kind, url, make in servers:  # warm-up
            load(url, [make(b) for b in bodies[kind][:100]], args.concurrency)
        blocks = max(1, args.blocks)
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for block in range(blocks):
            for server, kind, url, make in servers:
                part = bodies[kind][block::blocks]
                runs.setdefault((server, kind), []).append(
                    load(url, [make(b) for b in part], args.concurrency)
                )
        results: list[dict[str, Any]] = []
        for (server, kind), parts in runs.items():
            pooled = [ms for p in parts for ms in p["latencies"]]
            seconds = sum(p["requests"] / p["rps"] for p in parts)
            requests = sum(int(p["requests"]) for p in parts)
            results.append(
                {
                    "server": server,
                    "model": kind,
                    "requests": requests,
                    "errors": sum(int(p["errors"]) for p in parts),
                    "rps": requests / seconds,
                    "p50_ms": float(np.percentile(pooled, 50)),
                    "p99_ms": float(np.percentile(pooled, 99)),
                }
            )
            print(results[-1], flush=True)
    finally:
        for process in processes:
            stop(process)
    # lossless: N predictions, a graceful restart half way, count the logged answers
    before = ledger.prediction_count(lgb)
    port = free_port()
    log = work / "gateway-lossless.log"
    cmd = gateway_command(port, spec_file(work, lgb, "lightgbm", tracking, ledger_url, "off"))
    p = start(cmd, log)
    wait(f"http://127.0.0.1:{port}/readyz", p, log)
    answered: list[str] = []
    sent = iter(range(args.lossless))
    lock = threading.Lock()
    restarted = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as c:
            while True:
                with lock:
                    i = next(sent, None)
                if i is None:
                    return
                while True:
                    try:
                        r = c.post(
                            f"http://127.0.0.1:{port}/models/{lgb}/predict",
                            json={"rows": [rows[i % len(rows)]]},
                        )
                        if r.status_code == 200:
                            answered.append(r.json()["request_id"])
                            break
                    except httpx.HTTPError:
                        time.sleep(0.05)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    while len(answered) < args.lossless // 2:
        time.sleep(0.1)
    stop(p)
    p = start(cmd, log)
    wait(f"http://127.0.0.1:{port}/readyz", p, log)
    restarted.set()
    for t in threads:
        t.join()
    stop(p)
    wall = time.perf_counter() - t0
    logged = ledger.prediction_count(lgb) - before
    lossless = {
        "requests": args.lossless,
        "answered": len(answered),
        "logged": logged,
        "lost": len(answered) - logged,
        "seconds": wall,
    }
    print(lossless, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"load": results, "lossless": lossless, "args": vars(args) | {"out": str(args.out)}},
            indent=2,
        )
    )
    lines = [
        "| server | model | requests | rps | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['server']} | {r['model']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
        f"{r['p99_ms']:.1f} | {r['errors']} |"
        for r in results
    ]
    lines.append(f"\nlossless: {lossless}")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
