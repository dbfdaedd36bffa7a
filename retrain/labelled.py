"""Served -> labelled -> training data: logged answers joined with their feedback, written as
time partitions that ``ingest`` reads like any other source folder.

A tabular answer becomes its input rows (raw source rows, as the client sent them) with the
label column filled from the feedback; a recommender's answer becomes one interaction per
clicked item (user, item, weight 1, the time it was answered). One parquet file per hour of
answers, rewritten whole (atomically) at each export, so exporting twice changes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from retrain.config import ModelSpec
from retrain.errors import LiveError

logger = logging.getLogger(__name__)


def labelled_frame(
    spec: ModelSpec,
    predictions: Iterable[Mapping[str, Any]],
    feedback: Iterable[Mapping[str, Any]],
) -> pd.DataFrame:
    """Source rows of every served answer that got feedback; an ``_answered_at`` column says
    when it was answered (the export partitions on it)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for row in sorted(feedback, key=lambda r: r["at"]):
        latest[str(row["request_id"])] = row["outcome"]
    frames: list[pd.DataFrame] = []
    seen: set[str] = set()
    for p in predictions:
        rid = str(p["request_id"])
        if p.get("role") != "served" or p.get("error") or rid in seen or rid not in latest:
            continue
        inputs = p.get("inputs")
        if inputs is None:
            raise LiveError(
                f"answer {rid} of {spec.name} was logged without its inputs: set "
                "live.log_inputs = true so that labelled answers can become training data"
            )
        seen.add(rid)
        outcome = latest[rid]
        if spec.family == "als":
            assert spec.interactions is not None
            clicks = [str(i) for i in outcome.get("clicks", ())]
            user = str(inputs["users"][0])
            ts = pd.Timestamp(p["at"])
            frames.append(
                pd.DataFrame(
                    {
                        spec.interactions.user: [user] * len(clicks),
                        spec.interactions.item: clicks,
                        spec.interactions.weight: [1.0] * len(clicks),
                        spec.timestamp.column: [int(ts.timestamp())] * len(clicks),
                        "_answered_at": [ts] * len(clicks),
                    }
                )
            )
            continue
        labels = outcome.get("labels", [outcome["label"]] if "label" in outcome else None)
        rows = pd.DataFrame.from_records(inputs["rows"])
        if labels is None or len(labels) != len(rows):
            given = 0 if labels is None else len(labels)
            raise LiveError(
                f"feedback for answer {rid} of {spec.name} has {given}"
                f' label(s) for {len(rows)} row(s): send one label per row ("labels": [...])'
            )
        if spec.timestamp.column not in rows:
            raise LiveError(
                f"answer {rid} of {spec.name} has no {spec.timestamp.column!r} column: send raw "
                "source rows (with the timestamp) so that labelled answers can be trained on"
            )
        frames.append(rows.assign(**{spec.label: labels, "_answered_at": pd.Timestamp(p["at"])}))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def write_partitions(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """One parquet file per hour of answers in ``folder`` (each replaced atomically)."""
    if frame.empty:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    hours = frame["_answered_at"].dt.floor("h")
    for hour, part in frame.groupby(hours):
        path = folder / f"labelled-{pd.Timestamp(hour):%Y%m%d%H}.parquet"
        scratch = path.with_suffix(f".tmp-{os.getpid()}")
        part.drop(columns="_answered_at").to_parquet(scratch, index=False)
        os.replace(scratch, path)
        written.append(path)
    logger.info("wrote %d labelled rows in %d partition(s) to %s", len(frame), len(written), folder)
    return written
