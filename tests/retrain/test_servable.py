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


def _concatenated_recommendations(
    factors: servable.RecommenderFactors, user_ids: list, k: int, filter_seen: bool
) -> pd.DataFrame:
    """``servable.recommend`` as it assembled its rows before: one frame per part (ALS batch,
    popularity fallback), ``pd.concat`` and ``iloc`` into the order of the users asked."""
    users = servable.query_ids(user_ids)
    rows = servable.lookup(factors.user_index, servable.coerce_ids(factors.user_index, users))
    als = rows >= 0
    als[als] = factors.has_history[rows[als]]
    parts, positions = [], []
    batch = np.flatnonzero(als)
    if batch.size:
        scores = factors.user_factors[rows[batch]] @ factors.item_factors.T
        if filter_seen:
            seen = factors.seen[rows[batch]].tocoo()
            scores[seen.row, seen.col] = -np.inf
        cols, best = servable.top_k(scores, k)
        frame = servable.recommendation_frame(users[batch], factors.item_index[cols], best, "als")
        parts.append(frame)
        positions.append(np.repeat(batch, np.isfinite(best).sum(axis=1)))
    fallback = np.flatnonzero(~als)
    if fallback.size:
        head = factors.popular_items[:k]
        parts.append(
            servable.recommendation_frame(
                users[fallback],
                np.broadcast_to(factors.item_index[head], (fallback.size, head.size)),
                np.broadcast_to(factors.popular_scores[:k], (fallback.size, head.size)),
                "popularity",
            )
        )
        positions.append(np.repeat(fallback, head.size))
    out = pd.concat(parts, ignore_index=True)
    order = np.argsort(np.concatenate(positions), kind="stable")
    return out.iloc[order].reset_index(drop=True)


@pytest.mark.parametrize("ids", ["str", "int"])
@pytest.mark.parametrize("density", [0.3, 0.95, 1.0])
def test_recommendations_are_assembled_in_one_frame_as_the_concat_of_their_parts_gave(ids, density):
    """The rows of the ALS part and the popularity fallback are taken into the users' order
    and built as one frame: the same values, order, dtypes and index as the frames of each
    part concatenated and reordered (parts without rows included: every item seen)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n_users, n_items = 40, 12
    if ids == "str":
        user_index = np.array([f"u{i}" for i in range(n_users)], dtype=object)
        item_index = np.array([f"i{i}" for i in range(n_items)], dtype=object)
        strangers = ["zz", "yy"]
    else:
        user_index = np.arange(n_users, dtype="int64") * 3
        item_index = np.arange(n_items, dtype="int64") + 100
        strangers = [7, 8]
    seen = sp.csr_matrix((rng.random((n_users, n_items)) < density).astype("float64"))
    factors = servable.RecommenderFactors(
        user_index=user_index,
        item_index=item_index,
        user_factors=rng.normal(size=(n_users, 4)).astype("float32"),
        item_factors=rng.normal(size=(n_items, 4)).astype("float32"),
        seen=seen,
        has_history=rng.random(n_users) < 0.8,
        popular_items=rng.permutation(n_items),
        popular_scores=np.sort(rng.random(n_items))[::-1].copy(),
    )
    known = list(user_index)
    asked = [known[:10], known[::3] + strangers, strangers[:1], known[:5] * 2, known[::-1]]
    for users in asked:
        for k in (1, 3, 20):
            for filter_seen in (True, False):
                got = servable.recommend(factors, users, k=k, filter_seen=filter_seen)
                want = _concatenated_recommendations(factors, users, k, filter_seen)
                pd.testing.assert_frame_equal(got, want, check_exact=True)
                assert list(got.dtypes) == list(want.dtypes)
                # the popularity baseline's lists: one batch, as its one frame gave
                got = servable.recommend_popular(
                    item_index, user_index, factors.popular_items, factors.popular_scores,
                    seen, users, k, filter_seen,
                )  # fmt: skip
                want = _concatenated_popular(
                    item_index, user_index, factors.popular_items, factors.popular_scores,
                    seen, users, k, filter_seen,
                )  # fmt: skip
                pd.testing.assert_frame_equal(got, want, check_exact=True)


def _concatenated_popular(
    item_index, user_index, ranking, scores, seen, user_ids, k, filter_seen
) -> pd.DataFrame:
    """``servable.recommend_popular`` of one batch as it built its frame before."""
    users = servable.query_ids(user_ids)
    rows = servable.lookup(user_index, servable.coerce_ids(user_index, users))
    known = rows >= 0
    width = k
    if filter_seen and known.any():
        width = k + int(seen.getnnz(axis=1)[rows[known]].max())
    width = min(width, ranking.size)
    head = ranking[:width]
    items = np.broadcast_to(head, (users.size, width))
    best = np.broadcast_to(scores[:width], (users.size, width)).copy()
    if filter_seen and known.any():
        position = np.full(item_index.size, -1, dtype="int64")
        position[head] = np.arange(width)
        hits = seen[rows[known]].tocoo()
        pos = position[hits.col]
        hit = pos >= 0
        best[np.flatnonzero(known)[hits.row[hit]], pos[hit]] = -np.inf
        order = np.argsort(~np.isfinite(best), axis=1, kind="stable")[:, :k]
        items = np.take_along_axis(items, order, axis=1)
        best = np.take_along_axis(best, order, axis=1)
    else:
        items, best = items[:, :k], best[:, :k]
    frame = servable.recommendation_frame(users, item_index[items], best, "popularity")
    return pd.concat([frame], ignore_index=True)
