"""Shadow scores off the response path, in batches: a shadow costs a share of one model call,
not a second call per request.

A served request queues its shadow job and returns. One worker thread takes what queued in the
last ``wait`` seconds (at most ``batch`` jobs), groups the jobs by model, version and endpoint,
and scores each group with ONE call of the challenger (the rows, or the users, of all its
requests concatenated), then splits the answer back per request. Per-call overhead (frame
building, encoding, LightGBM's or the ALS scorer's set-up) is paid once per batch instead of
once per request, which is what made shadow traffic halve a gateway's throughput.

A group whose batch call fails is scored request by request, so an error is logged against the
request that caused it and never against its neighbours. When the queue is full (the gateway is
overloaded), a shadow job is not queued: it is logged at once with the error "shadow skipped:
queue full", so nothing is lost silently and serving never waits for shadows. A stop scores what
is queued before the logbook drains.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

BATCH = 256  # jobs per batch at most
WAIT = 0.25  # seconds a batch waits for more jobs after the first (off the response path)
CAPACITY = 10_000  # queued jobs at most; beyond, shadows are skipped (and logged as such)


@dataclass(frozen=True)
class Job:
    """One request's shadow: who scores it and what, and where its result goes."""

    group: tuple[str, str, str, int]  # model, version, endpoint, k (0 for predict)
    loaded: Any  # gateway.models.Loaded
    inputs: dict[str, Any]
    done: Callable[[Any, float, str | None], None]  # (output, latency ms, error)


Scorer = Callable[[Any, str, dict[str, Any]], Any]  # (loaded, endpoint, inputs) -> output


def _size(endpoint: str, inputs: dict[str, Any]) -> int:
    return len(inputs["rows"] if endpoint == "predict" else inputs["users"])


def merge(endpoint: str, jobs: list[Job]) -> dict[str, Any]:
    """The inputs of one call that scores every job of a group."""
    if endpoint == "predict":
        return {"rows": [row for job in jobs for row in job.inputs["rows"]]}
    users = dict.fromkeys(u for job in jobs for u in job.inputs["users"])  # once each, in order
    return {"users": list(users), "k": jobs[0].group[3]}


def split(endpoint: str, jobs: list[Job], output: dict[str, Any]) -> list[dict[str, Any]]:
    """One call's output cut back into each job's own answer, in order."""
    if endpoint != "predict":
        lists = {entry["user"]: entry for entry in output["recommendations"]}
        return [{"recommendations": [lists[u] for u in job.inputs["users"]]} for job in jobs]
    key = "predictions"
    values = output[key]
    sizes = [_size(endpoint, job.inputs) for job in jobs]
    if len(values) != sum(sizes):
        raise ValueError(f"a batch of {sum(sizes)} inputs got {len(values)} answers")
    parts, start = [], 0
    for n in sizes:
        parts.append({key: values[start : start + n]})
        start += n
    return parts


class ShadowScorer:
    """The batching worker of a gateway's shadow jobs."""

    def __init__(
        self,
        score: Scorer,
        batch: int = BATCH,
        wait: float = WAIT,
        capacity: int = CAPACITY,
    ) -> None:
        self.score = score
        self.batch = batch
        self.wait = wait
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=capacity)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped = 0
        self.batches = 0
        self.scored = 0

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gateway-shadow", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; never blocks. A full queue skips it (logged through ``job.done``)."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.skipped += 1
            job.done(None, 0.0, "shadow skipped: queue full (the gateway is overloaded)")

    def _take(self) -> list[Job]:
        try:
            jobs = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.wait
        while len(jobs) < self.batch:
            left = deadline - time.monotonic()
            try:
                jobs.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return jobs

    def run_batch(self, jobs: list[Job]) -> None:
        groups: dict[tuple[str, str, str, int], list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.group, []).append(job)
        for (_, _, endpoint, _), members in groups.items():
            self.batches += 1
            start = time.perf_counter()
            try:
                parts = split(
                    endpoint,
                    members,
                    self.score(members[0].loaded, endpoint, merge(endpoint, members)),
                )
            except Exception:
                # one bad request must not fail its neighbours: score them one at a time
                for job in members:
                    self._one(endpoint, job)
                continue
            ms = (time.perf_counter() - start) * 1000
            for job, part in zip(members, parts, strict=True):
                job.done(part, ms, None)
                self.scored += 1

    def _one(self, endpoint: str, job: Job) -> None:
        start = time.perf_counter()
        try:
            output, error = self.score(job.loaded, endpoint, job.inputs), None
        except Exception as exc:
            output, error = None, f"{type(exc).__name__}: {exc}"
        job.done(output, (time.perf_counter() - start) * 1000, error)
        self.scored += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            jobs = self._take()
            if jobs:
                self._guarded(jobs)
        while True:  # drain
            try:
                jobs = [self._queue.get_nowait() for _ in range(min(self.batch, self.pending))]
            except queue.Empty:
                jobs = []
            if not jobs:
                return
            self._guarded(jobs)

    def _guarded(self, jobs: list[Job]) -> None:
        try:
            self.run_batch(jobs)
        except Exception:  # a logging failure must not kill the worker; say so loudly
            logger.exception("shadow batch of %d job(s) failed", len(jobs))

    def stop(self, timeout: float = 30.0) -> None:
        """Score what is queued, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
