"""retrain/servable.py ships inside every model: it must stand alone and match training."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain import servable
from retrain.features import compute_features
from retrain.ingest import ingest


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:  # function-level imports (lightgbm, scipy) load only when used
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_bundled_module_imports_only_the_standard_library_numpy_and_pandas():
    imports = top_level_imports(Path(servable.__file__)) - {"__future__"}
    assert imports - set(sys.stdlib_module_names) == {"numpy", "pandas"}


def test_raw_rows_give_the_features_training_computed(bike_spec):
    spec = bike_spec.model_copy(update={"features": bike_spec.features.model_copy(
        update={"derived": ("dayofyear", "is_weekend")})})  # fmt: skip
    part = ingest(spec).partitions[3]
    raw = pd.read_csv(next(Path(spec.source.path).glob("2011-03.csv")))
    day = pd.to_datetime(raw["dteday"]) + pd.to_timedelta(raw["hr"], unit="h")
    rows = raw[(day >= part.start) & (day < part.end)].reset_index(drop=True)
    inputs = servable.TabularInputs(
        numeric=spec.features.numeric,
        categorical=spec.features.categorical,
        derived=spec.features.derived,
        timestamp="dteday",
        hours_from="hr",
    )

    served = inputs.features(rows)
    trained = compute_features(part, spec)[list(spec.features.columns)]
    pd.testing.assert_frame_equal(served[list(spec.features.columns)], trained)


def test_an_unparseable_timestamp_is_refused_naming_the_column_and_the_fix():
    inputs = servable.TabularInputs(("temp",), (), ("hour",), timestamp="dteday")
    rows = pd.DataFrame({"dteday": ["2011-03-01", "yesterday"], "temp": [0.2, 0.3]})
    with pytest.raises(servable.ServableError, match=r"'dteday' does not parse in 1 row.*format"):
        inputs.features(rows)


def test_rows_without_a_raw_column_are_refused_naming_it():
    inputs = servable.TabularInputs(("temp", "hum"), ("weathersit",))
    with pytest.raises(servable.ServableError, match=r"column\(s\) \['hum'\] are missing"):
        inputs.features(pd.DataFrame({"temp": [0.2], "weathersit": [1]}))


def test_float_codes_of_a_categorical_stay_integer_strings():
    values = servable.category_strings(pd.Series([1.0, np.nan, 3.0]))
    assert values.tolist() == ["1", None, "3"]


def test_query_keys_find_string_ids_by_integers_and_integer_ids_by_strings():
    strings = np.array(["4", "5"], dtype=object)
    assert servable.query_keys(strings, [4, "5", 6.0]).tolist() == ["4", "5", "6"]
    integers = np.array([4, 5], dtype="int64")
    found = servable.lookup(integers, servable.coerce_ids(integers, servable.query_keys(
        integers, ["4", "5"])))  # fmt: skip
    assert found.tolist() == [0, 1]


def test_the_matrix_encoding_holds_the_encoded_frames_values_to_the_bit(project_logs):
    X = pd.DataFrame(
        {
            "w": ["3", "1", None, "9", "2", "1"],
            "n": pd.array([1, None, 3, 4, 5, 6], dtype="Int64"),
            "t": [1.5, np.nan, -0.0, 1e300, 5.0, 0.1],
            "b": [True, False, True, True, False, False],
            "i": np.arange(6, dtype="int32"),
            "c": pd.Categorical(["x", "y", None, "x", "z", "y"]),
            "other": ["not", "a", "feature", "of", "the", "model"],
        }
    )
    names = ["t", "w", "n", "b", "i", "c"]
    cats = {"w": ["1", "2", "3"], "c": ["y", "x"]}

    matrix = servable.encode_matrix(X, names, cats)

    frame = servable.encode_frame(X, names, cats).to_numpy()
    assert matrix.dtype == frame.dtype == np.float64 and matrix.shape == frame.shape
    assert matrix.tobytes() == np.asfortranarray(frame).tobytes()  # NaN, -0.0 included
    for col, value in (("w", "9"), ("c", "z")):  # the unseen categories are said
        said = f"feature '{col}': 1 row(s) with categories the model never saw (e.g. ['{value}'])"
        assert said in project_logs.text
    with pytest.raises(servable.ServableError, match="missing"):
        servable.encode_matrix(X, ["t", "nope"], cats)


@pytest.mark.parametrize("unseen", [False, True])
@pytest.mark.parametrize("dtype", ["str", "string[pyarrow]", "large_string[pyarrow]", "object"])
@pytest.mark.parametrize("cats", [["b", "a", "c"], ["a", "b", "a"]], ids=["frozen", "twice"])
def test_the_matrix_encoding_of_a_category_column_is_the_frames_whatever_its_dtype(
    dtype, cats, unseen
):
    values = ["a", None, "c", "b", "a"] + (["zz"] if unseen else [])
    X = pd.DataFrame({"k": pd.Series(values, dtype=dtype), "t": np.arange(float(len(values)))})

    matrix = servable.encode_matrix(X, ["k", "t"], {"k": cats})

    frame = servable.encode_frame(X, ["k", "t"], {"k": cats}).to_numpy()
    assert matrix.tobytes() == np.asfortranarray(frame).tobytes()


@pytest.mark.parametrize(
    "cats", [["1", "2", "3"], ["2", "1", "2"]], ids=["frozen", "a category listed twice"]
)
def test_categorical_codes_are_positions_in_the_frozen_categories_unseen_and_missing_nan(
    cats, project_logs
):
    X = pd.DataFrame({"w": ["3", "1", None, "9", "2"], "t": [1.0, 2.0, 3.0, 4.0, 5.0]})

    out = servable.encode_frame(X, ["t", "w"], {"w": cats})

    # what a dict of value -> position gives (the last position of a category listed twice)
    codes = {value: float(i) for i, value in enumerate(cats)}
    want = [codes.get(v, np.nan) if pd.notna(v) else np.nan for v in X["w"]]
    np.testing.assert_array_equal(out["w"].to_numpy(), np.array(want))
    assert list(out.columns) == ["t", "w"] and (out.dtypes == "float64").all()
    unseen = [v for v in X["w"] if pd.notna(v) and v not in cats]
    assert f"{len(unseen)} row(s) with categories the model never saw (e.g. {unseen})" in (
        project_logs.text
    )


@pytest.mark.parametrize(
    ("index", "values"),
    [
        (np.array(["a", "b", "c"], dtype=object), pd.Series(["c", "a", "x", "c"], dtype="string")),
        (np.array(["a", "b", "c"], dtype=object), np.array(["c", "a", "x", None], dtype=object)),
        (np.array([1, 2, 3]), np.array([3, 3, 5, 1])),
        (np.array([1, 2, 3]), [3, "3", 1.0, None]),
        (np.array(["1", "2"], dtype=object), [1, "1", "2"]),
        (np.array([1, 2, 3]), np.array([], dtype="int64")),
        (np.array([], dtype=object), pd.Series(["a"])),
        (np.array(["a", None], dtype=object), np.array([None, "a", np.nan], dtype=object)),
        (np.array([1.0, np.nan]), np.array([np.nan, 1.0, 2.0])),
        (np.array([1, 2, 3]), pd.Series([1, 2, None], dtype="Int64")),
        # Arrow strings (index_in), and where it does not apply
        (np.array(["a", "é", "c"], dtype=object), pd.Series(["c", "é", "x"] * 3, dtype="str")),
        (np.array(["a", "b"], dtype=object), pd.Series(["b", "q"], dtype="string[pyarrow]")),
        (np.array(["a", "b"], dtype=object), pd.Series(["b", "a"], dtype="large_string[pyarrow]")),
        (np.array(["a", "b"], dtype=object), pd.Series(["b", None, "a"], dtype="str")),
        (np.array(["1", 2], dtype=object), pd.Series(["2", "1"], dtype="str")),
        (np.array(["a", None], dtype=object), pd.Series(["a", "b"], dtype="str")),
        (np.array([1, 2]), pd.Series(["1", "2"], dtype="str")),
    ],
)
def test_lookup_finds_each_value_where_get_indexer_of_every_value_does(index, values):
    got = servable.lookup(index, values)

    want = np.asarray(pd.Index(index).get_indexer(pd.Index(values)), dtype="int64")
    assert got.dtype == want.dtype
    assert got.tolist() == want.tolist()
