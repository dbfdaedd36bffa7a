"""The shadow batcher: one model call per batch, answers split back per request, errors kept to
the request that caused them, nothing dropped silently."""

from __future__ import annotations

import threading
import time
from typing import Any

from gateway.shadow import Job, ShadowScorer, merge, split


class Recorder:
    def __init__(self) -> None:
        self.results: dict[str, tuple[Any, str | None]] = {}
        self.lock = threading.Lock()

    def job(
        self, rid: str, inputs: dict[str, Any], kind: str = "predict", version: str = "1"
    ) -> Job:
        def done(output: Any, ms: float, error: str | None) -> None:
            with self.lock:
                self.results[rid] = (output, error)

        return Job(("m", version, kind, int(inputs.get("k", 0))), version, inputs, done)


def doubling(calls: list[int]):
    def score(loaded: Any, kind: str, inputs: dict[str, Any]) -> Any:
        calls.append(len(inputs["rows"]))
        if any(row.get("bad") for row in inputs["rows"]):
            raise ValueError("cannot score a bad row")
        return {"predictions": [2.0 * row["x"] for row in inputs["rows"]]}

    return score


def test_a_batch_scores_every_request_of_a_group_in_one_call():
    calls: list[int] = []
    rec = Recorder()
    scorer = ShadowScorer(doubling(calls))
    jobs = [rec.job(f"r{i}", {"rows": [{"x": i}, {"x": 10 + i}]}) for i in range(5)]

    scorer.run_batch(jobs)

    assert calls == [10]
    assert rec.results["r3"] == ({"predictions": [6.0, 26.0]}, None)
    assert scorer.batches == 1 and scorer.scored == 5


def test_versions_are_scored_in_their_own_calls():
    calls: list[int] = []
    rec = Recorder()
    scorer = ShadowScorer(doubling(calls))

    scorer.run_batch(
        [
            rec.job("a", {"rows": [{"x": 1}]}, version="1"),
            rec.job("b", {"rows": [{"x": 2}]}, version="2"),
        ]
    )

    assert sorted(calls) == [1, 1]


def test_a_bad_request_fails_alone_not_its_batch():
    calls: list[int] = []
    rec = Recorder()
    scorer = ShadowScorer(doubling(calls))
    jobs = [
        rec.job("good", {"rows": [{"x": 1}]}),
        rec.job("bad", {"rows": [{"x": 2, "bad": True}]}),
    ]

    scorer.run_batch(jobs)

    assert rec.results["good"] == ({"predictions": [2.0]}, None)
    output, error = rec.results["bad"]
    assert output is None and error == "ValueError: cannot score a bad row"


def test_recommend_batches_each_user_once_and_gives_every_request_its_lists():
    jobs = [
        Recorder().job("a", {"users": ["u1", "u2"], "k": 3}, kind="recommend"),
        Recorder().job("b", {"users": ["u2"], "k": 3}, kind="recommend"),
    ]
    merged = merge("recommend", jobs)
    assert merged == {"users": ["u1", "u2"], "k": 3}
    out = {"recommendations": [{"user": u, "items": [u + "-x"]} for u in merged["users"]]}
    assert split("recommend", jobs, out) == [
        {"recommendations": [{"user": "u1", "items": ["u1-x"]}, {"user": "u2", "items": ["u2-x"]}]},
        {"recommendations": [{"user": "u2", "items": ["u2-x"]}]},
    ]


def test_a_full_queue_skips_the_shadow_and_says_why():
    rec = Recorder()
    scorer = ShadowScorer(doubling([]), capacity=1)  # not started: nothing drains the queue
    scorer.submit(rec.job("first", {"rows": [{"x": 1}]}))

    scorer.submit(rec.job("second", {"rows": [{"x": 2}]}))

    assert rec.results["second"] == (None, "shadow skipped: queue full (the gateway is overloaded)")
    assert scorer.skipped == 1 and "first" not in rec.results


def test_the_worker_batches_what_queues_and_a_stop_scores_the_rest():
    calls: list[int] = []
    rec = Recorder()
    scorer = ShadowScorer(doubling(calls), wait=0.2)
    scorer.start()
    for i in range(50):
        scorer.submit(rec.job(f"r{i}", {"rows": [{"x": i}]}))
    time.sleep(0.05)

    scorer.stop()

    assert len(rec.results) == 50
    assert all(error is None for _, error in rec.results.values())
    assert len(calls) < 10 and sum(calls) == 50
