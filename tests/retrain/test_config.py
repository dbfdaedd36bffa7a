from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from retrain.config import load_spec, parse_spec
from retrain.errors import SpecError
from tests.conftest import ROOT, spec_dict, with_overrides


def to_toml(data: dict[str, Any]) -> str:
    """A tiny TOML writer for spec dicts (JSON scalars and arrays are valid TOML values)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for name, table in tables:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in scalars.items()]
        for sub, inner in table.items():
            if isinstance(inner, dict):
                lines.append(f"\n[{name}.{sub}]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in inner.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def spec_data(tmp_path: Path) -> dict[str, Any]:
    # A relative source path: load_spec must resolve it against the spec file's folder.
    data = spec_dict(Path("data"), tmp_path / "state")
    data["source"]["path"] = "data"
    return data


def write_spec(folder: Path, data: dict[str, Any], suffix: str = ".toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"spec{suffix}"
    text = to_toml(data) if suffix == ".toml" else yaml.safe_dump(data)
    path.write_text(text)
    return path


def spec_error(data: dict[str, Any], **overrides: Any) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(with_overrides(data, overrides))
    return str(info.value)


def test_toml_and_yaml_files_of_the_same_spec_load_to_equal_specs(tmp_path, spec_data):
    from_toml = load_spec(write_spec(tmp_path / "conf", spec_data, ".toml"))
    from_yaml = load_spec(write_spec(tmp_path / "conf", spec_data, ".yaml"))

    assert from_toml == from_yaml
    assert from_toml.name == "bike-test"
    assert from_toml.windows.train_delta.days == 21
    assert from_toml.features.categorical == ("weathersit", "weekday")
    assert from_toml.lightgbm.params == {"num_leaves": 15}


def test_a_yaml_spec_is_read_with_a_safe_loader_that_builds_no_python_object(tmp_path, spec_data):
    path = write_spec(tmp_path / "conf", spec_data, ".yaml")
    path.write_text(path.read_text() + "evil: !!python/object/apply:os.getcwd []\n")

    with pytest.raises(SpecError, match="does not parse"):
        load_spec(path)


def test_the_bundled_demo_spec_loads_and_its_data_folder_exists():
    spec = load_spec(ROOT / "retrain" / "demo" / "bike.toml")

    assert spec.source.path is not None
    assert (spec.source.path / "hour.csv").is_file()
    assert "casual" in spec.features.leakage


def test_unknown_key_is_an_error_naming_the_dotted_key_a_suggestion_and_the_allowed_keys(
    spec_data,
):
    message = spec_error(spec_data, **{"windows.trian": "30D"})

    assert "windows.trian: unknown key" in message
    assert "did you mean 'train'?" in message
    assert "allowed here: holdout, train" in message


def test_unknown_key_in_a_spec_file_names_the_file(tmp_path, spec_data):
    spec_data["gate"]["tolerence"] = 0.1
    path = write_spec(tmp_path / "conf", spec_data)

    with pytest.raises(SpecError, match=r"(?s)spec\.toml.*gate\.tolerence.*'tolerance'"):
        load_spec(path)


def test_wrong_type_is_an_error_naming_the_key_and_the_value(spec_data):
    message = spec_error(spec_data, **{"lightgbm.num_boost_round": "many"})

    assert "lightgbm.num_boost_round:" in message
    assert "'many'" in message


def test_missing_required_label_is_an_error_naming_it(spec_data):
    del spec_data["label"]

    with pytest.raises(SpecError, match=r"label: required key is missing"):
        parse_spec(spec_data)


@pytest.mark.parametrize(
    ("task", "metric", "allowed"),
    [("regression", "auc", "'mae', 'mape', 'rmse'"), ("binary", "mae", "'accuracy', 'auc'")],
)
def test_a_metric_that_does_not_fit_the_task_is_refused_listing_the_fitting_ones(
    spec_data, task, metric, allowed
):
    message = spec_error(spec_data, task=task, metric=metric)

    assert f"metric {metric!r} does not fit task {task!r}" in message
    assert allowed in message


def test_a_feature_listed_under_leakage_is_refused(spec_data):
    message = spec_error(spec_data, **{"features.numeric": ["temp", "casual"]})

    assert "['casual']" in message
    assert "features.leakage" in message


def test_the_label_as_a_feature_is_refused(spec_data):
    message = spec_error(spec_data, **{"features.categorical": ["cnt"]})

    assert "['cnt'] are the label" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"metric": "auc"}, "does not fit task"),
        (
            {"source": {"kind": "sql", "url": "postgresql://retrain:s3cret@db/src"}},
            "source: source.kind = 'sql' needs source.url",
        ),
    ],
    ids=["spec-level", "section-level"],
)
def test_an_error_about_a_whole_section_does_not_echo_it_and_its_secrets(
    spec_data, overrides, expected
):
    # The section used to be printed after the message, URL passwords included.
    spec_data["state"]["ledger_url"] = "postgresql://retrain:s3cret@db/retrain"
    message = spec_error(spec_data, **overrides)

    assert expected in message
    assert "s3cret" not in message


def test_an_invalid_duration_names_the_key_the_value_and_the_expected_form(spec_data):
    message = spec_error(spec_data, **{"windows.train": "banana"})

    assert "windows.train:" in message
    assert "'banana' is not a duration" in message
    assert "'90D'" in message


def test_a_spec_file_that_does_not_exist_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "spec.toml"

    with pytest.raises(SpecError, match=r"spec file .*nowhere.spec\.toml does not exist"):
        load_spec(missing)


def test_a_relative_source_path_is_resolved_against_the_spec_files_folder(
    tmp_path, spec_data, monkeypatch
):
    path = write_spec(tmp_path / "conf", spec_data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    spec = load_spec(path)

    assert spec.source.path == (tmp_path / "conf" / "data").resolve()


def test_an_absolute_source_path_is_kept(tmp_path, spec_data):
    spec_data["source"]["path"] = str(tmp_path / "abs")

    spec = load_spec(write_spec(tmp_path / "conf", spec_data))

    assert spec.source.path == tmp_path / "abs"


def test_dotted_overrides_win_over_the_file_and_none_leaves_the_file_value(tmp_path, spec_data):
    path = write_spec(tmp_path / "conf", spec_data)

    spec = load_spec(
        path,
        overrides={
            "windows.train": "14D",
            "lightgbm.num_boost_round": 5,
            "gate.tolerance": None,
        },
    )

    assert spec.windows.train == "14D"
    assert spec.lightgbm.num_boost_round == 5
    assert spec.windows.holdout == "7D"  # untouched sibling
    assert spec.gate.tolerance == 0.0  # None = "not given", the file's (default) value stays


def test_overrides_are_validated_like_the_file(tmp_path, spec_data):
    path = write_spec(tmp_path / "conf", spec_data)

    with pytest.raises(SpecError, match=r"windows.holdout: 'soon' is not a duration"):
        load_spec(path, overrides={"windows.holdout": "soon"})


def test_feature_spec_hash_changes_with_the_features_and_not_with_gate_or_training_settings(
    spec_data,
):
    base = parse_spec(spec_data).feature_spec_hash()
    other_features = parse_spec(
        {**spec_data, "features": {**spec_data["features"], "numeric": ["temp", "hum"]}}
    ).feature_spec_hash()
    other_settings = parse_spec(
        {
            **spec_data,
            "gate": {"tolerance": 0.05},
            "lightgbm": {"num_boost_round": 7},
            "windows": {"train": "60D", "holdout": "3D"},
        }
    ).feature_spec_hash()

    assert other_features != base
    assert other_settings == base
    assert parse_spec(spec_data).feature_spec_hash() == base


@pytest.mark.parametrize(
    ("value", "expected"),
    [("later", "gate.suspend_after: 'later' is not a duration"), ("0s", "positive duration")],
)
def test_an_invalid_suspend_after_names_the_key_and_the_fix(spec_data, value, expected):
    message = spec_error(spec_data, **{"gate.suspend_after": value})

    assert expected in message


def test_an_age_trigger_shorter_than_the_holdout_is_refused_with_the_fix(spec_data):
    message = spec_error(
        spec_data, **{"monitor.max_age": "7D", "windows.holdout": "14D", "monitor.any": ["age"]}
    )

    assert "monitor.max_age (7D) must be longer than windows.holdout (14D)" in message
    assert "set monitor.max_age to at least 28D" in message


def test_a_short_max_age_is_fine_when_age_does_not_trigger(tmp_path, spec_data):
    spec_data["monitor"] = {"max_age": "7D", "any": ["drift"]}

    assert load_spec(write_spec(tmp_path, spec_data)).monitor.max_age == "7D"


@pytest.mark.parametrize(
    ("plots", "passed", "refused"),
    [("passed", True, False), ("always", True, True), ("never", False, False)],
)
def test_reports_plots_says_which_candidates_get_plots(spec_data, plots, passed, refused):
    spec = parse_spec(with_overrides(spec_data, {"reports.plots": plots}))

    assert spec.reports.wants_plots(gate_passed=True) is passed
    assert spec.reports.wants_plots(gate_passed=False) is refused


def test_plots_by_default_only_for_a_candidate_that_passes_the_gate(spec_data):
    assert parse_spec(spec_data).reports.plots == "passed"
    with pytest.raises(SpecError, match=r"reports\.plots"):
        parse_spec(with_overrides(spec_data, {"reports.plots": "sometimes"}))
