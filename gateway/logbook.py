"""Predictions and feedback written to the ledger by a background thread, never on the
response path; a stop drains the queue, so a graceful restart loses nothing."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from retrain.ledger import Ledger

logger = logging.getLogger(__name__)

BATCH = 500
INTERVAL = 0.05  # seconds between writes when the queue is not full
RETRY = 1.0


class Logbook:
    """A write-behind log of one ledger. ``put_*`` never blocks on the database."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gateway-logbook", daemon=True)
        self._thread.start()

    def put_prediction(self, row: dict[str, Any]) -> None:
        self._queue.put(("prediction", row))

    def put_feedback(self, row: dict[str, Any]) -> None:
        self._queue.put(("feedback", row))

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _take(self) -> list[tuple[str, dict[str, Any]]]:
        items: list[tuple[str, dict[str, Any]]] = []
        while len(items) < BATCH:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _write(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        predictions = [row for kind, row in items if kind == "prediction"]
        feedback = [row for kind, row in items if kind == "feedback"]
        while True:
            try:
                self.ledger.record_predictions(predictions)
                predictions = []
                self.ledger.record_feedback(feedback)
                self.written += len(items)
                return
            except Exception:  # the database is down: keep the rows, retry (never drop them)
                logger.exception("cannot write %d log rows to the ledger; retrying", len(items))
                if self._stop.is_set() and time.monotonic() > self._deadline:
                    raise
                time.sleep(RETRY)

    def _run(self) -> None:
        while not self._stop.is_set():
            items = self._take()
            if items:
                self._write(items)
            if len(items) < BATCH:
                self._stop.wait(INTERVAL)
        while items := self._take():  # drain
            self._write(items)

    _deadline = float("inf")

    def stop(self, timeout: float = 60.0) -> None:
        """Write everything queued, then stop (bounded by ``timeout`` if the ledger is down)."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 5)
        left = self.pending
        if left:
            logger.error("%d prediction/feedback rows could not be written to the ledger", left)
