"""Families are peers behind one protocol: looked up by name, a new one is a registration."""

from __future__ import annotations

import sys
import types

import pytest

from retrain import families
from retrain.errors import SpecError
from retrain.families import family_named, register
from retrain.families.lineage import Lineage, Tag, backtest_key


def test_every_registered_family_has_every_step_of_the_protocol() -> None:
    steps = [
        "plan", "fit", "fit_candidate", "rebuild", "evaluate", "write_evidence", "baseline",
        "signature_sample", "curves", "predict_params", "monitored_features", "score", "pooled",
        "metric_name", "serving_inputs",
    ]  # fmt: skip
    for name in families.REGISTERED:
        family = family_named(name)
        assert family.name == name
        assert all(callable(getattr(family, step)) for step in steps)


def test_an_unknown_family_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(SpecError, match="family 'online' is not registered; known families: als"):
        family_named("online")


def test_a_third_family_is_one_module_and_a_registration(monkeypatch) -> None:
    module = types.ModuleType("retrain_online_family")
    module.FAMILY = types.SimpleNamespace(name="online")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "retrain_online_family", module)
    monkeypatch.setattr(families, "REGISTERED", dict(families.REGISTERED))

    register("online", "retrain_online_family")

    assert family_named("online") is module.FAMILY


def test_lineage_reads_a_versions_tags_with_types() -> None:
    lineage = Lineage(
        {
            Tag.WINDOW_START: "2011-03-01 00:00:00",
            Tag.DATA_VERSIONS: "dv1,dv2",
            Tag.INCREMENTS: "2",
            Tag.PARENT_VERSION: "3",
            backtest_key("mae", "candidate"): "41.5",
        }
    )

    assert str(lineage.window_start) == "2011-03-01 00:00:00"
    assert lineage.data_versions == ("dv1", "dv2")
    assert (lineage.increments, lineage.parent_version) == (2, "3")
    assert lineage.backtest("mae") == 41.5
    assert Lineage({}).parent_version is None
    assert Lineage({Tag.DATA_VERSION: "dv9"}).data_versions == ("dv9",)
