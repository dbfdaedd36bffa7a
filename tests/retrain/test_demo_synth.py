"""The generated drifting stream: reproducible, really drifting, with concepts that recur."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.config import load_spec
from retrain.demo import synth
from retrain.ingest import ingest
from retrain.trainers import LightGBMTrainer

DEMO = Path(synth.__file__).parent
COLUMNS = [*synth.FEATURES, "channel"]


@pytest.fixture(scope="module")
def stream() -> pd.DataFrame:
    return synth.generate()


def _fit(rows: pd.DataFrame) -> LightGBMTrainer:
    return LightGBMTrainer(
        task="binary",
        params={"learning_rate": 0.1, "num_leaves": 15, "verbose": -1},
        num_boost_round=60,
        categorical=("channel",),
        random_state=0,
    ).fit(rows[COLUMNS], rows["y"].to_numpy(dtype="float64"))


def _accuracy(model: LightGBMTrainer, rows: pd.DataFrame) -> float:
    return float(np.mean((model.predict(rows[COLUMNS]) >= 0.5) == (rows["y"] == 1)))


def _days(frame: pd.DataFrame, start: int, end: int) -> pd.DataFrame:
    return frame[(frame["day"] >= start) & (frame["day"] < end)]


def test_the_same_seed_gives_identical_files_and_another_seed_other_rows(tmp_path: Path) -> None:
    first = synth.write_stream(tmp_path / "a", seed=5, days=12, rows_per_day=30)
    again = synth.write_stream(tmp_path / "b", seed=5, days=12, rows_per_day=30)
    other = synth.write_stream(tmp_path / "c", seed=6, days=12, rows_per_day=30)
    assert [p.name for p in first] == [f"2024-01-{d:02d}.parquet" for d in range(1, 13)]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert not pd.read_parquet(first[0]).equals(pd.read_parquet(other[0]))


def test_the_shipped_copy_is_the_default_stream(stream: pd.DataFrame) -> None:
    shipped = pd.concat(
        [pd.read_parquet(p) for p in sorted((DEMO / "data" / "drift_stream").glob("*.parquet"))],
        ignore_index=True,
    )
    expected = stream.drop(columns="day")
    pd.testing.assert_frame_equal(shipped, expected, check_dtype=False)


def test_a_model_of_concept_a_fails_on_b_and_c_and_recovers_when_a_recurs(
    stream: pd.DataFrame,
) -> None:
    model_a = _fit(_days(stream, 40, 100))
    on_a = _accuracy(model_a, _days(stream, 90, 100))
    on_b = _accuracy(model_a, _days(stream, 100, 160))
    on_c = _accuracy(model_a, _days(stream, 190, 250))
    recurring_a = _accuracy(model_a, _days(stream, 250, 310))
    assert on_a > 0.8 and recurring_a > 0.8
    assert on_b < on_a - 0.25 and on_c < on_a - 0.25
    assert abs(recurring_a - on_a) < 0.05
    # B recurs too: a model of the first B stretch is right again at the end of the year
    model_b = _fit(_days(stream, 100, 160))
    assert _accuracy(model_b, _days(stream, 340, 365)) > 0.8


def test_a_gradual_segment_mixes_the_old_and_the_new_concept(stream: pd.DataFrame) -> None:
    share_c = _days(stream, 160, 190).groupby("day")["concept"].apply(lambda c: (c == "C").mean())
    assert share_c.iloc[:5].mean() < 0.2 and share_c.iloc[-5:].mean() > 0.8
    assert set(_days(stream, 100, 160)["concept"]) == {"B"}


def test_the_demo_spec_reads_the_shipped_stream_as_daily_partitions(tmp_path: Path) -> None:
    spec = load_spec(DEMO / "drift.toml", {"state.dir": str(tmp_path / "state")})
    result = ingest(spec)
    assert len(result.partitions) == 365 and not result.quarantined
    assert result.partitions[100].key == "2024-04-10"
    assert "concept" not in spec.features.columns


def test_a_schedule_with_a_gap_is_refused_by_name() -> None:
    gap = (synth.Segment(0, 5, "A"), synth.Segment(6, 10, "B"))
    with pytest.raises(ValueError, match="without gaps: a segment starts at day 6, expected 5"):
        synth.generate(days=10, schedule=gap)
