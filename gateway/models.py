"""The versions a gateway serves, per model: loaded by alias, swapped atomically when one moves.

A :class:`Slot` holds one immutable :class:`Deployed` (champion, challenger, challenger share);
a request reads the reference once and uses that snapshot to the end, so a swap never drops or
mixes a request. A poll thread re-reads the aliases every ``live.poll`` and loads new versions
BEFORE the swap; a registry that does not answer leaves the current versions serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from registry import ModelRegistry
from registry.live import live_versions, load_servable
from retrain.config import ModelSpec
from retrain.ledger import Ledger, now
from retrain.live import outcomes
from retrain.live.outcomes import online_metric
from retrain.live.stats import thompson_share

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    version: str
    model: Any  # an mlflow PyFuncModel


@dataclass(frozen=True)
class Deployed:
    champion: Loaded | None
    challenger: Loaded | None
    share: float  # the challenger's share of traffic (canary, ab, bandit)


def predict_rows(
    loaded: Loaded, rows: list[dict[str, Any]], probabilities: bool = False
) -> list[Any]:
    """One answer per row: a number, or a multiclass model's class as the data writes it (with
    ``probabilities``: ``{"class": ..., "probability_<class>": ...}`` per row)."""
    frame = pd.DataFrame.from_records(rows)
    if probabilities:
        answer = loaded.model.predict(frame, params={"probabilities": True})
        return [
            {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in pd.DataFrame(answer).to_dict("records")
        ]
    result = np.asarray(loaded.model.predict(frame)).ravel()
    if result.dtype.kind == "f":
        return [float(v) for v in result]
    return [v.item() if isinstance(v, np.generic) else v for v in result]  # classes


def recommend_users(loaded: Loaded, users: list[Any], k: int) -> list[dict[str, Any]]:
    frame = loaded.model.predict(pd.DataFrame({"user": [str(u) for u in users]}), params={"k": k})
    lists: dict[str, dict[str, Any]] = {
        str(u): {"user": str(u), "items": [], "scores": []} for u in users
    }
    for row in frame.itertuples(index=False):
        entry = lists[str(row.user)]
        entry["items"].append(str(row.item))
        entry["scores"].append(float(row.score))
    return [lists[str(u)] for u in users]


class Slot:
    """One model of the gateway: its spec, registry, current versions and poll thread."""

    def __init__(self, spec: ModelSpec, ledger: Ledger) -> None:
        self.spec = spec
        self.name = spec.name
        self.ledger = ledger
        self.registry = ModelRegistry.for_spec(spec.state, spec.name, ledger)
        self.deployed = Deployed(None, None, spec.live.share)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def family(self) -> str:
        return self.spec.family

    def refresh(self) -> bool:
        """Re-read the aliases; load and swap in what moved. True when something changed."""
        with self._lock:
            current = self.deployed
            wanted = live_versions(self.registry)
            champion = self._load(wanted.champion, current)
            challenger = self._load(wanted.challenger, current)
            share = self._share(champion, challenger)
            fresh = Deployed(champion, challenger, share)
            changed = _v(fresh.champion) != _v(current.champion) or _v(fresh.challenger) != _v(
                current.challenger
            )
            self.deployed = fresh  # one reference assignment: atomic for every reader
            if changed:
                logger.info(
                    "%s now serves champion %s, challenger %s",
                    self.name,
                    _v(fresh.champion),
                    _v(fresh.challenger),
                )
            return changed

    def _load(self, version: str | None, current: Deployed) -> Loaded | None:
        if version is None:
            return None
        for loaded in (current.champion, current.challenger):
            if loaded is not None and loaded.version == version:
                return loaded
        return Loaded(version, load_servable(self.registry, version))

    def _share(self, champion: Loaded | None, challenger: Loaded | None) -> float:
        live = self.spec.live
        if live.routing != "bandit" or champion is None or challenger is None:
            return live.share
        _, greater = online_metric(self.spec.family, self.spec.metric)
        found = outcomes(
            self.spec.family,
            self.spec.metric,
            self.ledger.predictions(self.name),
            self.ledger.feedback(),
            now=now(),
            label_delay=timedelta(seconds=live.label_delay_delta.total_seconds()),
            label_code=self.spec.label_code,
        )
        versions = {"champion": champion.version, "challenger": challenger.version}
        values = {
            arm: [
                o.value
                for o in found
                if o.arm == arm and o.version == version and o.served and o.value is not None
            ]
            for arm, version in versions.items()
        }
        return thompson_share(values["champion"], values["challenger"], greater, live.floor)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name=f"poll-{self.name}", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.spec.live.poll_seconds):
            try:
                self.refresh()
                self.last_error = None
            except Exception as exc:  # keep serving what is loaded; say why
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("%s: alias poll failed, serving on: %s", self.name, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _v(loaded: Loaded | None) -> str | None:
    return loaded.version if loaded is not None else None
