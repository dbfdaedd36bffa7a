"""gate.refit through the real flow: the registered version learned up to the as-of."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from flows.retrain_flow import make_registry, retrain_flow
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import spec_dict


def test_a_promoted_version_is_the_refit_through_the_holdout_and_the_next_gate_is_fair(
    tmp_path: Path, bike_dir: Path
):
    spec_path = tmp_path / "spec.yaml"
    data = spec_dict(bike_dir, tmp_path / "state", **{"gate.refit": True, "gate.tolerance": 1.0})
    spec_path.write_text(yaml.safe_dump(data))

    first = retrain_flow(str(spec_path), mode="manual", as_of="2011-04-22", auto_approve=True)
    # the next holdout starts at 2011-04-19, inside the refitted champion's training data
    second = retrain_flow(str(spec_path), mode="manual", as_of="2011-04-26", auto_approve=True)

    assert first["promoted"], first["decision"]
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    tags = registry.version(first["version"]).tags
    assert tags["retrain.refit"] == "true"
    assert pd.Timestamp(tags["retrain.window_end"]) == pd.Timestamp("2011-04-22")  # the as-of
    assert tags["retrain.data_end"] == "2011-04-21 23:00:00"
    assert pd.Timestamp(tags["retrain.validated.window_end"]) == pd.Timestamp("2011-04-15")
    assert pd.Timestamp(tags["retrain.holdout_start"]) == pd.Timestamp("2011-04-15")
    verdict = second["decision"] if not second["promoted"] else ""
    tags2 = registry.version(second["version"]).tags
    assert tags2["retrain.champion_at_training"] == first["version"], verdict
    assert second["champion"] is not None  # compared with the champion, on unseen rows
    # gate.equal_staleness (on by default): the version keeps its validated fit, and the next
    # gate judges against it on the whole holdout (it trained to 04-15, before 04-19)
    served, validated = registry.load_with_validated(first["version"])
    assert validated is not None and validated is not served
    assert tags2["retrain.gate.champion_fit"] == "validated"
    assert pd.Timestamp(tags2["retrain.gate.champion_train_end"]) == pd.Timestamp("2011-04-15")
    assert tags2["retrain.gate.judged_start"] == tags2["retrain.holdout_start"]
    assert pd.Timestamp(tags2["retrain.gate.judged_start"]) == pd.Timestamp("2011-04-19")


def test_a_retrain_reads_each_cached_partition_once(tmp_path: Path, bike_dir: Path, monkeypatch):
    # the fit, the gate and the refit through the holdout share the partitions they read
    from retrain.features import FeatureCache

    spec_path = tmp_path / "spec.yaml"
    data = spec_dict(bike_dir, tmp_path / "state", **{"gate.refit": True, "gate.tolerance": 1.0})
    spec_path.write_text(yaml.safe_dump(data))
    reads: list[str] = []
    real = FeatureCache.read_table
    monkeypatch.setattr(
        FeatureCache, "read_table", lambda self, part: reads.append(part.key) or real(self, part)
    )

    run = retrain_flow(str(spec_path), mode="manual", as_of="2011-04-22", auto_approve=True)

    assert run["promoted"], run["decision"]  # refitted: train and holdout read twice before
    assert reads, "the retrain read no cached partition"
    assert len(reads) == len(set(reads)), sorted(reads)
