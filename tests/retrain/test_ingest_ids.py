"""Ids are kept exactly as written, in every source format (generated data)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from retrain.config import ModelSpec, parse_spec
from retrain.families.als import interactions
from retrain.features import FeatureCache
from retrain.ingest import ingest

NOW = pd.Timestamp("2025-01-01")
USERS = ["007", "7", "0042", "42"]  # pairs that a number would merge
ITEMS = ["0425210", "425210", "00001", "1"]


def clicks() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": [f"2024-01-0{1 + i % 2} 1{i}:00:00" for i in range(8)],
            "user": USERS * 2,
            "item": ITEMS + ITEMS[::-1],
            "rating": [0.5, 1.5, 2.5, 3.5] * 2,  # JSON reads 1.0 back as the integer 1
        }
    )


def write(frame: pd.DataFrame, folder: Path, fmt: str) -> dict:
    folder.mkdir(parents=True)
    if fmt == "csv":
        frame.to_csv(folder / "rows.csv", index=False)
    elif fmt == "parquet":
        frame.to_parquet(folder / "rows.parquet", index=False)
    elif fmt == "json":
        (folder / "rows.json").write_text(json.dumps(frame.to_dict("records")))
    elif fmt == "jsonl":
        lines = [json.dumps(r) for r in frame.to_dict("records")]
        (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")
    else:
        url = f"sqlite:///{folder / 'rows.db'}"
        engine = sa.create_engine(url)
        frame.to_sql("rows", engine, index=False)
        engine.dispose()
        return {"kind": "sql", "url": url, "table": "rows"}
    return {"path": str(folder)}


def als_spec(tmp_path: Path, source: dict) -> ModelSpec:
    return parse_spec(
        {
            "name": "ids",
            "family": "als",
            "source": source,
            "timestamp": {"column": "ts"},
            "interactions": {"user": "user", "item": "item", "weight": "rating"},
            "state": {"dir": str(tmp_path / "state")},
        }
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json", "jsonl", "sql"])
def test_user_and_item_ids_keep_their_leading_zeros_in_every_format(tmp_path, fmt):
    spec = als_spec(tmp_path, write(clicks(), tmp_path / "src", fmt))

    result = ingest(spec, now=NOW)

    rows = pd.concat([p.frame for p in result.partitions])
    assert sorted(rows["user"]) == sorted(USERS * 2)
    assert sorted(rows["item"]) == sorted(ITEMS * 2)
    cache = FeatureCache(spec.state.features, spec)
    cache.materialize(result.partitions)
    table = interactions(spec, cache.load(result.partitions))
    assert set(table["item"]) == set(ITEMS)
    assert set(table["user"]) == set(USERS)


def test_every_format_gives_the_same_fingerprints(tmp_path):
    prints = []
    for fmt in ("csv", "parquet", "json", "sql"):
        spec = als_spec(tmp_path / fmt, write(clicks(), tmp_path / fmt / "src", fmt))
        prints.append([(p.key, p.fingerprint) for p in ingest(spec, now=NOW).partitions])

    assert prints[0] == prints[1] == prints[2] == prints[3]


def test_a_categorical_feature_code_keeps_its_zeros_and_integral_floats_lose_the_fraction(
    tmp_path,
):
    frame = pd.DataFrame(
        {
            "ts": ["2024-01-01 01:00", "2024-01-01 02:00", "2024-01-01 03:00"],
            "store": ["0042", "42", "0042"],
            "season": [1.0, None, 2.0],  # codes with a gap: written 1.0, 2.0 by pandas
            "y": [1.0, 2.0, 3.0],
        }
    )
    folder = tmp_path / "src"
    folder.mkdir()
    frame.to_csv(folder / "rows.csv", index=False)
    spec = parse_spec(
        {
            "name": "stores",
            "label": "y",
            "source": {"path": str(folder)},
            "timestamp": {"column": "ts"},
            "features": {"categorical": ["store", "season"]},
            "state": {"dir": str(tmp_path / "state")},
        }
    )

    [part] = ingest(spec, now=NOW).partitions

    assert part.frame["store"].tolist() == ["0042", "42", "0042"]
    assert part.frame["season"].tolist()[::2] == ["1", "2"]
