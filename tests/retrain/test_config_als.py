"""The ALS spec: [interactions] and [als] sections, validated with errors naming key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrain.config import load_spec, parse_spec
from retrain.errors import SpecError
from tests.conftest import ROOT, als_spec_dict


@pytest.fixture
def data(tmp_path: Path) -> dict:
    return als_spec_dict(tmp_path / "ratings.csv", tmp_path / "state")


def test_interaction_columns_become_the_cached_label_and_id_columns(data):
    spec = parse_spec(data)

    assert spec.family == "als" and spec.task == "ranking"
    assert spec.label == "rating"
    assert spec.features.categorical == ("userId", "movieId")
    assert spec.greater_is_better


def test_the_metric_defaults_to_ndcg_and_must_be_a_ranking_metric(data):
    data.pop("metric")
    assert parse_spec(data).metric == "ndcg"

    data["metric"] = "mae"
    with pytest.raises(SpecError, match=r"metric 'mae' does not fit family 'als'.*'ndcg'"):
        parse_spec(data)


def test_an_als_spec_without_interactions_is_refused_naming_the_section(data):
    data.pop("interactions")
    with pytest.raises(SpecError, match=r"needs an \[interactions\] section.*user = 'userId'"):
        parse_spec(data)


def test_a_missing_interaction_column_is_named(data):
    del data["interactions"]["weight"]
    with pytest.raises(SpecError, match=r"interactions.weight: required key is missing"):
        parse_spec(data)


def test_the_same_column_twice_is_refused(data):
    data["interactions"]["item"] = "userId"
    with pytest.raises(SpecError, match=r"three different columns"):
        parse_spec(data)


def test_label_or_features_in_an_als_spec_point_to_interactions(data):
    data["label"] = "rating"
    with pytest.raises(SpecError, match=r"takes no label: name the columns under \[interactions\]"):
        parse_spec(data)


def test_interactions_in_a_lightgbm_spec_are_refused(tmp_path):
    from tests.conftest import spec_dict

    data = spec_dict(tmp_path, tmp_path / "state")
    data["interactions"] = {"user": "u", "item": "i", "weight": "w"}
    with pytest.raises(SpecError, match=r"\[interactions\] is for family = 'als'"):
        parse_spec(data)


def test_unknown_als_keys_and_bad_values_name_the_key_and_the_choices(data):
    data["als"]["factor"] = 3
    with pytest.raises(SpecError, match=r"als.factor: unknown key; did you mean 'factors'"):
        parse_spec(data)
    del data["als"]["factor"]
    data["als"]["confidence"] = "bm26"
    with pytest.raises(SpecError, match=r"als.confidence: .*'bm25'"):
        parse_spec(data)
    data["als"]["confidence"] = "bm25"
    data["als"]["popularity_window"] = "soon"
    with pytest.raises(SpecError, match=r"als.popularity_window: 'soon' is not a duration"):
        parse_spec(data)


def test_swapping_the_user_and_item_columns_makes_every_cached_partition_stale(data):
    als = parse_spec(data)
    swapped = {"user": "movieId", "item": "userId", "weight": "rating"}

    assert als.feature_spec_hash() == parse_spec(data | {"seed": 1}).feature_spec_hash()
    assert (
        als.feature_spec_hash() != parse_spec(data | {"interactions": swapped}).feature_spec_hash()
    )


def test_the_bundled_movielens_spec_loads_and_its_data_and_license_are_shipped():
    path = ROOT / "retrain" / "demo" / "movielens.toml"
    spec = load_spec(path)

    assert spec.family == "als"
    assert spec.source.path is not None and spec.source.path.is_file()
    assert (spec.source.path.parent / "README.txt").is_file()  # GroupLens' terms travel with it
