from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight, tfidf_weight
from threadpoolctl import threadpool_limits

from retrain.errors import FoldInError, NotFittedError, TrainingError
from retrain.trainers import ALSTrainer

MOVIELENS = Path(__file__).resolve().parents[3] / "shared" / "data" / "movielens_latest_small"
DAY0 = pd.Timestamp("2024-03-01")
SMALL = {"factors": 8, "iterations": 10, "regularization": 0.1, "alpha": 5.0}


def taste_data(n_users: int = 30, days: int = 8, seed: int = 0) -> pd.DataFrame:
    """300 rows: odd users take 6 of items 100-109, even users 6 of 110-119, plus 4 others."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        liked = np.arange(100, 110) if user % 2 else np.arange(110, 120)
        items = np.concatenate([rng.choice(liked, 6, replace=False), rng.choice(200, 4) + 120])
        for item in items:
            when = DAY0 + pd.Timedelta(hours=float(rng.uniform(0, 24 * days)))
            rows.append((user, int(item), float(rng.integers(1, 6)), when))
    return pd.DataFrame(rows, columns=["user", "item", "weight", "ts"])


def increment() -> pd.DataFrame:
    """Day 9: user 1 (odd) takes two more odd items, new user 999 (odd) arrives with five and
    with new item 500, which even user 2 also takes."""
    day = DAY0 + pd.Timedelta(days=9)
    rows = [(1, 108, 4.0, day), (1, 109, 5.0, day)]
    rows += [(999, item, 5.0, day) for item in (100, 101, 102, 103, 500)]
    rows += [(2, 500, 3.0, day)]
    return pd.DataFrame(rows, columns=["user", "item", "weight", "ts"])


def fresh_history(base: pd.DataFrame) -> pd.DataFrame:
    """The base history plus the increment; user 1's two new items are ones it had not seen."""
    extra = increment()
    seen_by_1 = set(base.loc[base["user"] == 1, "item"])
    odd_unseen = [i for i in range(100, 110) if i not in seen_by_1]
    extra.loc[extra["user"] == 1, "item"] = odd_unseen[:2]
    return pd.concat([base, extra], ignore_index=True)


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return taste_data()


@pytest.fixture(scope="module")
def fitted(base) -> ALSTrainer:
    return ALSTrainer(**SMALL).fit(base)


@pytest.fixture(scope="module")
def folded(base, fitted) -> ALSTrainer:
    return ALSTrainer(**SMALL, strategy="foldin", init_model=fitted).fit(fresh_history(base))


def recalculated(model: ALSTrainer, rows: np.ndarray, conf: sp.csr_matrix) -> np.ndarray:
    with threadpool_limits(1, "blas"):
        return np.asarray(model.to_implicit().recalculate_user(rows, conf))


def row_of(model: ALSTrainer, user) -> int:
    return int(np.flatnonzero(model.user_index_ == user)[0])


# -- sklearn conventions --------------------------------------------------------------------------
def test_init_stores_every_parameter_as_given_and_validates_nothing():
    given = {"factors": -1, "confidence": "nonsense", "strategy": "sideways", "alpha": 0}

    model = ALSTrainer(**given)

    for name in inspect.signature(ALSTrainer.__init__).parameters:
        if name != "self":
            assert hasattr(model, name), f"__init__ does not store {name}"
    assert {name: getattr(model, name) for name in given} == given
    assert not [name for name in vars(model) if name.endswith("_")]


def test_fit_returns_self_and_every_learned_attribute_ends_with_an_underscore(base):
    model = ALSTrainer(**SMALL)
    before = dict(vars(model))

    assert model.fit(base) is model

    learned = set(vars(model)) - set(before)
    assert {"user_index_", "item_index_", "user_factors_", "item_factors_", "seen_"} <= learned
    assert all(name.endswith("_") for name in learned)
    assert {name: getattr(model, name) for name in before} == before
    assert model.user_factors_.shape == (30, 8)
    assert model.increments_ == 0


def test_same_data_and_seed_give_identical_factors_and_another_seed_does_not(base):
    first = ALSTrainer(**SMALL, random_state=7).fit(base)
    second = ALSTrainer(**SMALL, random_state=7).fit(base)
    other = ALSTrainer(**SMALL, random_state=8).fit(base)

    np.testing.assert_array_equal(first.user_factors_, second.user_factors_)
    np.testing.assert_array_equal(first.item_factors_, second.item_factors_)
    assert not np.allclose(first.item_factors_, other.item_factors_)


def test_row_order_of_the_input_does_not_change_the_model(base, fitted):
    shuffled = base.sample(frac=1.0, random_state=3)

    model = ALSTrainer(**SMALL).fit(shuffled)

    np.testing.assert_array_equal(model.user_index_, fitted.user_index_)
    np.testing.assert_array_equal(model.user_factors_, fitted.user_factors_)


def test_id_maps_are_sorted_external_ids(fitted, base):
    assert fitted.user_index_.tolist() == sorted(base["user"].unique())
    assert fitted.item_index_.tolist() == sorted(base["item"].unique())


def test_the_model_learns_the_two_tastes(fitted):
    recs = fitted.recommend([3, 4], k=2)

    odd, even = recs[recs["user"] == 3], recs[recs["user"] == 4]
    assert set(odd["item"]) <= set(range(100, 110))
    assert set(even["item"]) <= set(range(110, 120))
    assert (recs["source"] == "als").all()


# -- fold-in ----------------------------------------------------------------------------------
def test_fold_in_keeps_every_row_and_appends_new_ids(fitted, folded):
    n_users, n_items = fitted.user_index_.size, fitted.item_index_.size

    np.testing.assert_array_equal(folded.user_index_[:n_users], fitted.user_index_)
    np.testing.assert_array_equal(folded.item_index_[:n_items], fitted.item_index_)
    assert folded.user_index_[n_users:].tolist() == [999]
    assert folded.item_index_[n_items:].tolist() == [500]
    assert folded.new_users_.tolist() == [999]
    assert folded.new_items_.tolist() == [500]
    assert folded.increments_ == 1


def test_fold_in_updates_exactly_the_changed_users(folded):
    assert sorted(folded.updated_users_.tolist()) == [1, 2, 999]


def test_unchanged_users_keep_their_factors_bit_for_bit(fitted, folded):
    unchanged = ~np.isin(fitted.user_index_, folded.updated_users_)
    n_users = fitted.user_index_.size

    assert unchanged.sum() == 28  # all but users 1 and 2
    np.testing.assert_array_equal(
        folded.user_factors_[:n_users][unchanged], fitted.user_factors_[unchanged]
    )


def test_items_not_refreshed_keep_their_factors_bit_for_bit(fitted, folded):
    n_items = fitted.item_index_.size
    kept = ~np.isin(fitted.item_index_, folded.updated_items_)

    assert kept.sum() >= n_items - 5
    np.testing.assert_array_equal(folded.item_factors_[:n_items][kept], fitted.item_factors_[kept])
    assert 500 in folded.updated_items_


def test_a_folded_user_is_solved_on_the_full_history_not_only_the_new_rows(fitted, folded):
    row = row_of(folded, 1)
    conf = folded.confidence_matrix()
    full = conf[[row]]
    new_items = [i for i in np.flatnonzero(full.toarray()[0]) if fitted.user_items_[row, i] == 0]
    assert len(new_items) == 2
    only_new = sp.lil_matrix(full.shape, dtype="float32")
    only_new[0, new_items] = full[0, new_items].toarray()

    from_full = recalculated(folded, np.array([row]), full)[0]
    from_new_rows = recalculated(folded, np.array([row]), only_new.tocsr())[0]

    np.testing.assert_allclose(folded.user_factors_[row], from_full, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(folded.user_factors_[row] - from_new_rows) > 0.2 * np.linalg.norm(
        from_full
    )


def test_every_folded_user_matches_recalculate_user_on_the_final_items(folded):
    rows = np.flatnonzero(np.isin(folded.user_index_, folded.updated_users_))
    conf = folded.confidence_matrix()

    expected = recalculated(folded, rows, conf[rows])

    np.testing.assert_allclose(folded.user_factors_[rows], expected, rtol=1e-5, atol=1e-6)


def test_a_cg_fold_in_moves_the_changed_users_toward_their_exact_solution_and_no_one_else(
    base, fitted, folded
):
    cg = ALSTrainer(**SMALL, strategy="foldin", init_model=fitted, foldin_solver="cg")
    cg.fit(fresh_history(base))
    n_users = fitted.user_index_.size
    changed = np.isin(cg.user_index_, cg.updated_users_)
    old = changed[:n_users]
    exact = folded.user_factors_[changed]
    error = np.linalg.norm(cg.user_factors_[changed] - exact, axis=1)

    assert sorted(cg.updated_users_.tolist()) == sorted(folded.updated_users_.tolist())
    np.testing.assert_array_equal(cg.user_factors_[:n_users][~old], fitted.user_factors_[~old])
    assert (error > 0).all()  # not the exact solve
    before = np.linalg.norm(fitted.user_factors_[old] - folded.user_factors_[:n_users][old], axis=1)
    assert (error[: old.sum()] < 0.5 * before).all()  # users 1 and 2 moved most of the way
    assert error[-1] < 0.2 * np.linalg.norm(exact[-1])  # new user 999, from zeros
    top = [m.recommend([999], k=3)["item"].tolist() for m in (cg, folded)]
    assert top[0] == top[1]


def test_a_new_item_is_solved_from_all_its_users_and_can_be_recommended(fitted, folded):
    # the documented steps: new users (999) are solved first against the init model's items,
    # then the new item against every user who took it (2 with the init factors, 999 fresh)
    item = int(np.flatnonzero(folded.item_index_ == 500)[0])
    conf = folded.confidence_matrix()
    n_users, n_items = fitted.user_index_.size, fitted.item_index_.size
    step = fitted.to_implicit()
    step.item_factors = np.vstack([fitted.item_factors_, np.zeros((1, 8), dtype="float32")])
    new_user = np.array([row_of(folded, 999)])
    with threadpool_limits(1, "blas"):
        first = step.recalculate_user(new_user, conf[new_user])
        step.user_factors = np.vstack([fitted.user_factors_, first])
        step._XtX = None
        item_users = conf.T.tocsr()[[item]]
        expected = step.recalculate_item(np.array([item]), item_users)[0]

    assert item_users.indices.tolist() == [row_of(folded, 2), n_users]  # users 2 and 999
    assert item == n_items
    np.testing.assert_allclose(folded.item_factors_[item], expected, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(expected) > 0.01
    everything = folded.recommend([3], k=folded.item_index_.size)
    assert 500 in set(everything["item"])


def test_refresh_items_none_refolds_only_new_items(base, fitted):
    model = ALSTrainer(**SMALL, strategy="foldin", init_model=fitted, refresh_items=None)

    model.fit(fresh_history(base))

    assert model.updated_items_.tolist() == [500]
    n_items = fitted.item_index_.size
    np.testing.assert_array_equal(model.item_factors_[:n_items], fitted.item_factors_)


def test_a_late_row_stamped_before_the_training_end_still_marks_its_user_changed(base, fitted):
    late = pd.DataFrame(
        {"user": [5], "item": [115], "weight": [3.0], "ts": [DAY0 + pd.Timedelta(hours=1)]}
    )
    history = pd.concat([base, late], ignore_index=True)
    assert (base["user"].eq(5) & base["item"].eq(115)).sum() == 0
    assert late["ts"].iloc[0] < fitted.train_end_

    model = ALSTrainer(**SMALL, strategy="foldin", init_model=fitted).fit(history)

    assert model.updated_users_.tolist() == [5]


def test_a_fold_in_with_no_new_data_changes_nothing(base, fitted):
    model = ALSTrainer(**SMALL, strategy="foldin", init_model=fitted).fit(base)

    assert model.updated_users_.size == 0 and model.updated_items_.size == 0
    np.testing.assert_array_equal(model.user_factors_, fitted.user_factors_)
    np.testing.assert_array_equal(model.item_factors_, fitted.item_factors_)


def test_fold_in_given_only_the_new_rows_is_refused(fitted):
    with pytest.raises(FoldInError, match=r"needs each user's FULL history up to the cutoff"):
        ALSTrainer(**SMALL, strategy="foldin", init_model=fitted).fit(increment())


def test_fold_in_with_other_settings_than_the_init_model_is_refused(base, fitted):
    model = ALSTrainer(**{**SMALL, "factors": 16}, strategy="foldin", init_model=fitted)

    with pytest.raises(FoldInError, match=r"factors 16 \(init model: 8\).*Recompute"):
        model.fit(fresh_history(base))


def test_fold_in_with_data_ending_before_the_init_model_is_refused(base, fitted):
    model = ALSTrainer(**SMALL, strategy="foldin", init_model=fitted)

    with pytest.raises(FoldInError, match=r"before the init model's training end"):
        model.fit(base[base["ts"] < DAY0 + pd.Timedelta(days=4)])


def test_increments_count_fold_ins_and_a_recompute_resets_them(base, fitted, folded):
    second = ALSTrainer(**SMALL, strategy="foldin", init_model=folded).fit(fresh_history(base))
    again = ALSTrainer(**SMALL, init_model=second).fit(fresh_history(base))

    assert (fitted.increments_, folded.increments_, second.increments_) == (0, 1, 2)
    assert again.increments_ == 0


def test_a_recompute_from_an_init_model_keeps_its_rows(base, folded):
    history = fresh_history(base)
    extra = pd.DataFrame({"user": [0], "item": [100], "weight": [1.0], "ts": [history.ts.max()]})

    model = ALSTrainer(**SMALL, init_model=folded).fit(pd.concat([history, extra]))

    n_users = folded.user_index_.size
    np.testing.assert_array_equal(model.user_index_[:n_users], folded.user_index_)
    assert model.user_index_[n_users:].tolist() == [0]
    assert model.updated_users_.size == model.user_index_.size


# -- recommendations ------------------------------------------------------------------------------
def test_an_unknown_user_gets_the_recent_popularity_fallback_with_its_source_stated(base):
    # item 119 is the most popular of the last day; 100 the most popular overall
    last = base["ts"].max()
    recent = pd.DataFrame(
        {"user": [1, 3, 5, 7], "item": [119] * 4, "weight": [1.0] * 4, "ts": [last] * 4}
    )
    model = ALSTrainer(**SMALL, popularity_window="1D").fit(pd.concat([base, recent]))

    recs = model.recommend(["nobody", 2], k=3)

    fallback = recs[recs["user"] == "nobody"]
    assert fallback["source"].tolist() == ["popularity"] * 3
    assert fallback["item"].iloc[0] == 119
    assert fallback["rank"].tolist() == [1, 2, 3]
    assert (recs.loc[recs["user"] == 2, "source"] == "als").all()
    assert recs["user"].tolist()[:3] == ["nobody"] * 3  # in the order asked


def test_seen_items_are_filtered_unless_asked_otherwise(fitted, base):
    seen = set(base.loc[base["user"] == 3, "item"])

    filtered = fitted.recommend([3], k=20)
    unfiltered = fitted.recommend([3], k=20, filter_seen=False)

    assert not seen & set(filtered["item"])
    assert seen & set(unfiltered["item"])
    assert filtered["rank"].tolist() == list(range(1, len(filtered) + 1))
    assert filtered["score"].is_monotonic_decreasing


def test_a_user_who_saw_nearly_everything_gets_fewer_rows_not_seen_items(base):
    everything = pd.DataFrame(
        {
            "user": 77,
            "item": sorted(base["item"].unique())[:-2],
            "weight": 1.0,
            "ts": base["ts"].max(),
        }
    )
    model = ALSTrainer(**SMALL).fit(pd.concat([base, everything], ignore_index=True))

    recs = model.recommend([77], k=5)

    assert len(recs) == 2
    assert set(recs["item"]) == set(sorted(base["item"].unique())[-2:])


def test_rows_below_min_rating_teach_nothing_but_count_as_seen(base):
    model = ALSTrainer(**SMALL, min_rating=3.0).fit(base)
    low = base[base["weight"] < 3]

    assert model.user_items_.nnz == (base["weight"] >= 3).sum()
    user = int(low["user"].iloc[0])
    assert not set(low.loc[low["user"] == user, "item"]) & set(
        model.recommend([user], k=50)["item"]
    )


def test_duplicates_are_summed_or_the_latest_wins(base):
    first = base.iloc[[0]].copy()
    again = first.assign(weight=1.0, ts=first["ts"] + pd.Timedelta(hours=1))
    data = pd.concat([base, again], ignore_index=True)
    user, item = first["user"].iloc[0], first["item"].iloc[0]

    summed = ALSTrainer(**SMALL, confidence="linear").fit(data)
    latest = ALSTrainer(**SMALL, confidence="linear", duplicates="last").fit(data)

    r, c = row_of(summed, user), int(np.flatnonzero(summed.item_index_ == item)[0])
    assert summed.user_items_[r, c] == first["weight"].iloc[0] + 1.0
    assert latest.user_items_[r, c] == 1.0


def test_string_query_ids_find_integer_users(fitted):
    assert fitted.recommend(["3"], k=2)["source"].tolist() == ["als", "als"]


def test_string_ids_work_end_to_end(base, tmp_path):
    data = base.assign(user="u" + base["user"].astype(str), item="i" + base["item"].astype(str))

    model = ALSTrainer(**SMALL).fit(data)
    loaded = ALSTrainer.load(model.save(tmp_path / "m"))

    assert model.user_index_.dtype == object
    pd.testing.assert_frame_equal(
        loaded.recommend(["u1", "u2", "zz"]), model.recommend(["u1", "u2", "zz"])
    )


# -- confidence ---------------------------------------------------------------------------------
def test_bm25_and_tfidf_are_implicits_weights_on_the_user_item_matrix(base):
    for scheme, reference in (("bm25", bm25_weight), ("tfidf", tfidf_weight)):
        model = ALSTrainer(**SMALL, confidence=scheme).fit(base)
        assert (model.idf_ > 0.01).all()  # the floor is not in play on this data

        expected = sp.csr_matrix(reference(model.user_items_.astype("float64")))

        np.testing.assert_allclose(
            model.confidence_matrix().toarray(), expected.toarray(), rtol=1e-5
        )


def test_threshold_confidence_is_one_for_every_positive(base):
    model = ALSTrainer(**SMALL, confidence="threshold", min_rating=4).fit(base)

    conf = model.confidence_matrix()
    assert conf.nnz == (base["weight"] >= 4).sum()
    assert set(conf.data.tolist()) == {1.0}


def test_idf_statistics_are_frozen_across_fold_ins(base, fitted):
    model = ALSTrainer(**SMALL, confidence="bm25").fit(base)

    folded = ALSTrainer(**SMALL, confidence="bm25", strategy="foldin", init_model=model)
    folded.fit(fresh_history(base))

    n_items = model.item_index_.size
    np.testing.assert_array_equal(folded.idf_[:n_items], model.idf_)
    assert folded.mean_user_weight_ == model.mean_user_weight_
    assert folded.idf_.size == n_items + 1


# -- fold-in from the increment alone (the history stored with the init model) ----------------
LEARNED = (
    "user_index_", "item_index_", "user_factors_", "item_factors_", "idf_", "popular_items_",
    "popular_scores_", "updated_users_", "updated_items_", "new_users_", "new_items_",
    "recent_users_", "recent_items_", "recent_ts_",
)  # fmt: skip


def two_days(base: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two increments after ``base``: repeats of stored pairs (higher ratings), new items for
    known users, a new item, a new user, and user 4000 whose first day has only a rating below
    3 (with min_rating 3 a row it has no factors for) and who likes items on the second."""
    day = DAY0 + pd.Timedelta(days=9)
    first, again = base.iloc[0], base.iloc[7]
    one = [
        (first["user"], first["item"], 5.0, day),
        (again["user"], again["item"], 5.0, day + pd.Timedelta(hours=1)),
        (1, 109, 4.0, day), (2, 500, 3.0, day), (2, 119, 4.0, day),
        (999, 100, 5.0, day), (999, 101, 4.0, day), (999, 500, 5.0, day),
        (4000, 102, 1.0, day), (4000, 600, 2.0, day + pd.Timedelta(hours=2)),
    ]  # fmt: skip
    day += pd.Timedelta(days=1)
    two = [
        (4000, 103, 5.0, day), (4000, 104, 4.0, day), (3, 500, 5.0, day),
        (999, 102, 3.0, day), (999, 102, 4.0, day + pd.Timedelta(hours=1)),
    ]  # fmt: skip
    columns = ["user", "item", "weight", "ts"]
    return pd.DataFrame(one, columns=columns), pd.DataFrame(two, columns=columns)


def assert_same_model(a: ALSTrainer, b: ALSTrainer) -> None:
    for name in LEARNED:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("user_items_", "seen_"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and (x != y).nnz == 0, name
    assert a.n_train_rows_ == b.n_train_rows_
    assert a.train_end_ == b.train_end_ and a.increments_ == b.increments_
    assert set(map(tuple, a.orphans_.to_numpy())) == set(map(tuple, b.orphans_.to_numpy()))


@pytest.mark.parametrize("confidence", ["linear", "bm25", "tfidf", "threshold"])
@pytest.mark.parametrize(("duplicates", "min_rating"), [("sum", None), ("last", 3.0)])
def test_an_increment_fold_in_equals_a_fold_in_given_the_full_history(
    base, confidence, duplicates, min_rating
):
    params = {**SMALL, "confidence": confidence, "duplicates": duplicates}
    params |= {"min_rating": min_rating, "popularity_window": "36h", "refresh_items": 0.1}
    one, two = two_days(base)
    start = ALSTrainer(**params).fit(base)
    history = start
    increment = start
    seen = base
    for day in (one, two):
        seen = pd.concat([seen, day], ignore_index=True)
        history = ALSTrainer(**params, strategy="foldin", init_model=history).fit(seen)
        increment = ALSTrainer(
            **params, strategy="foldin", init_model=increment, foldin_data="increment"
        ).fit(day)

        assert_same_model(increment, history)
    assert 4000 in increment.updated_users_ and 500 in increment.updated_items_
    if min_rating is not None:  # user 4000's low rating of day one is seen once it has a row
        assert "als" in set(increment.recommend([4000], k=3)["source"])
        row, col = row_of(increment, 4000), int(np.flatnonzero(increment.item_index_ == 102)[0])
        assert increment.seen_[row, col] == 1 and increment.user_items_[row, col] == 0


def test_an_increment_fold_in_from_a_saved_model_equals_one_from_memory(base, tmp_path):
    one, two = two_days(base)
    params = {**SMALL, "min_rating": 3.0, "strategy": "foldin", "foldin_data": "increment"}
    start = ALSTrainer(**SMALL, min_rating=3.0).fit(base)
    day_one = ALSTrainer(**params, init_model=start).fit(one)
    loaded = ALSTrainer.load(day_one.save(tmp_path / "model"))

    assert_same_model(loaded, day_one)
    assert_same_model(
        ALSTrainer(**params, init_model=loaded).fit(two),
        ALSTrainer(**params, init_model=day_one).fit(two),
    )


def test_an_increment_fold_in_refuses_rows_stamped_at_or_before_the_init_models_end(base, fitted):
    late = increment().assign(ts=fitted.train_end_)

    with pytest.raises(FoldInError, match=r"8 rows are stamped at or before .* foldin_data="):
        ALSTrainer(**SMALL, strategy="foldin", init_model=fitted, foldin_data="increment").fit(late)


def test_an_increment_that_demotes_a_stored_positive_is_refused(base):
    start = ALSTrainer(**SMALL, duplicates="last", min_rating=3.0).fit(base)
    pair = base[base["weight"] >= 3].iloc[0]
    demoted = pd.DataFrame(
        {"user": [pair["user"]], "item": [pair["item"]], "weight": [1.0],
         "ts": [start.train_end_ + pd.Timedelta(hours=1)]}
    )  # fmt: skip
    trainer = ALSTrainer(
        **SMALL, duplicates="last", min_rating=3.0, strategy="foldin", init_model=start,
        foldin_data="increment",
    )  # fmt: skip

    with pytest.raises(FoldInError, match=r"1 user\(s\) have a stored positive .* recompute"):
        trainer.fit(demoted)


def test_an_increment_fold_in_needs_the_popularity_rows_the_init_model_kept(fitted):
    trainer = ALSTrainer(
        **SMALL, strategy="foldin", init_model=fitted, foldin_data="increment",
        popularity_window="60D",
    )  # fmt: skip

    with pytest.raises(FoldInError, match=r"longer than the init model's '30D'"):
        trainer.fit(increment())


def test_a_format_1_model_loads_and_folds_in_only_from_the_full_history(base, tmp_path):
    directory = ALSTrainer(**SMALL).fit(base).save(tmp_path / "model")
    meta = json.loads((directory / "als.json").read_text())
    meta["format"] = 1
    del meta["params"]["foldin_data"]
    (directory / "als.json").write_text(json.dumps(meta))
    (directory / "orphans.parquet").unlink()
    (directory / "recent.npz").unlink()

    old = ALSTrainer.load(directory)
    folded = ALSTrainer(**SMALL, strategy="foldin", init_model=old).fit(fresh_history(base))

    assert folded.updated_users_.size == 3
    with pytest.raises(FoldInError, match=r"saved in format 1.* foldin_data='history'"):
        ALSTrainer(**SMALL, strategy="foldin", init_model=old, foldin_data="increment").fit(
            increment()
        )


# -- persistence -------------------------------------------------------------------------------
def test_save_and_load_reproduce_recommend_exactly(folded, tmp_path):
    users = [1, 2, 999, 12345, 30]

    loaded = ALSTrainer.load(folded.save(tmp_path / "model"))

    pd.testing.assert_frame_equal(loaded.recommend(users, k=7), folded.recommend(users, k=7))
    np.testing.assert_array_equal(loaded.user_factors_, folded.user_factors_)
    np.testing.assert_array_equal(loaded.user_index_, folded.user_index_)
    assert (loaded.user_items_ != folded.user_items_).nnz == 0
    assert loaded.get_params() == folded.get_params()
    assert loaded.train_end_ == folded.train_end_
    assert loaded.increments_ == 1
    assert loaded.updated_users_.tolist() == folded.updated_users_.tolist()
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {
        "user_factors.npy",
        "item_factors.npy",
        "user_index.parquet",
        "item_index.parquet",
        "seen.npz",
        "user_items.npz",
        "als.json",
    }


def test_a_loaded_model_can_be_the_init_model_of_a_fold_in(folded, base, tmp_path):
    loaded = ALSTrainer.load(folded.save(tmp_path / "model"))
    history = fresh_history(base)

    from_loaded = ALSTrainer(**SMALL, strategy="foldin", init_model=loaded).fit(history)
    from_memory = ALSTrainer(**SMALL, strategy="foldin", init_model=folded).fit(history)

    np.testing.assert_array_equal(from_loaded.user_factors_, from_memory.user_factors_)


def test_loading_a_folder_without_a_model_names_it(tmp_path):
    with pytest.raises(TrainingError, match=r"empty holds no saved ALS model"):
        ALSTrainer.load(tmp_path / "empty")


def test_recommend_and_save_before_fit_are_not_fitted_errors(tmp_path):
    with pytest.raises(NotFittedError, match=r"call fit\(interactions\) first"):
        ALSTrainer().recommend([1])
    with pytest.raises(NotFittedError, match=r"not fitted yet"):
        ALSTrainer().save(tmp_path / "m")


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": "log"}, r"confidence scheme 'log' is unknown; use one of"),
        ({"strategy": "warm"}, r"strategy 'warm' is unknown"),
        ({"factors": 0}, r"factors must be a positive integer, got 0"),
        ({"alpha": 0.0}, r"alpha must be > 0"),
        ({"duplicates": "max"}, r"duplicates 'max' is unknown; use 'sum'"),
        ({"refresh_items": -1.0}, r"refresh_items must be None"),
        ({"foldin_data": "new"}, r"foldin_data 'new' is unknown; use 'history'"),
        ({"foldin_solver": "lsq"}, r"foldin_solver 'lsq' is unknown; use 'exact'"),
        ({"popularity_window": "soon"}, r"popularity window 'soon' is not a duration"),
        ({"strategy": "foldin"}, r"'foldin' needs a fitted init_model .* use strategy='recompute'"),
    ],
)
def test_invalid_parameters_are_refused_at_fit(base, kwargs, message):
    model = ALSTrainer(**kwargs)

    with pytest.raises(TrainingError, match=message):
        model.fit(base)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.iloc[:0], r"no interactions to fit on: .* widen it"),
        (lambda f: f.assign(weight=-f["weight"]), r"have negative weights .* drop or clip"),
        (lambda f: f.drop(columns=["ts"]), r"lack column\(s\) \['ts'\]: rename"),
        (lambda f: f.assign(ts=1), r"ts must hold timestamps .* pd.to_datetime"),
        (lambda f: f.assign(weight=np.nan), r"missing or infinite weight"),
        (lambda f: f.assign(user=None), r"have no user id"),
        (lambda f: f.assign(weight=0.0), r"none of the 300 interactions counts as a positive"),
    ],
)
def test_unusable_interactions_are_refused_naming_the_fix(base, change, message):
    with pytest.raises(TrainingError, match=message):
        ALSTrainer(**SMALL).fit(change(base))


def test_mixed_id_types_are_refused(base):
    data = base.astype({"user": object})
    data.loc[0, "user"] = "1"

    with pytest.raises(TrainingError, match=r"user ids mix types"):
        ALSTrainer(**SMALL).fit(data)


def test_the_training_loss_falls_with_more_iterations(base):
    one = ALSTrainer(**{**SMALL, "iterations": 1}).fit(base).loss()
    ten = ALSTrainer(**{**SMALL, "iterations": 10}).fit(base).loss()

    assert np.isfinite(one) and 0 < ten < one


def test_non_default_params_name_what_differs(fitted):
    assert ALSTrainer(factors=32, strategy="recompute").non_default_params() == {
        "factors": 32,
        "strategy": "recompute",
    }


# -- real data --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def movielens_1990s() -> pd.DataFrame:
    ratings = pd.read_csv(MOVIELENS / "ratings.csv")
    frame = pd.DataFrame(
        {
            "user": ratings["userId"],
            "item": ratings["movieId"],
            "weight": ratings["rating"],
            "ts": pd.to_datetime(ratings["timestamp"], unit="s"),
        }
    )
    return frame[frame["ts"] < "2000-01-01"].reset_index(drop=True)


def test_fold_in_on_real_movielens_ratings_keeps_its_promises(movielens_1990s):
    data = movielens_1990s
    cutoff = pd.Timestamp("1999-11-01")
    params = {"factors": 32, "iterations": 10, "min_rating": 3.5, "confidence": "bm25"}
    base = ALSTrainer(**params).fit(data[data["ts"] < cutoff])

    folded = ALSTrainer(**params, strategy="foldin", init_model=base).fit(data)
    recomputed = ALSTrainer(**params).fit(data)

    active = data[(data["ts"] >= cutoff) & (data["weight"] >= 3.5)]["user"].unique()
    assert sorted(folded.updated_users_.tolist()) == sorted(active.tolist())
    assert 0 < len(active) < base.user_index_.size
    n = base.user_index_.size
    same = ~np.isin(base.user_index_, active)
    np.testing.assert_array_equal(folded.user_factors_[:n][same], base.user_factors_[same])
    rows = np.flatnonzero(np.isin(folded.user_index_, active))
    conf = folded.confidence_matrix()
    np.testing.assert_allclose(
        folded.user_factors_[rows], recalculated(folded, rows, conf[rows]), rtol=1e-4, atol=1e-5
    )
    # both models answer every user of the data, known ones from ALS
    users = data["user"].unique().tolist()
    for model in (folded, recomputed):
        recs = model.recommend(users, k=10)
        assert recs.groupby("user").size().eq(10).all()
        assert set(recs["source"]) == {"als"}


@pytest.mark.parametrize("dtype", ["str", "string[pyarrow]", "large_string[pyarrow]", object])
def test_sorted_ids_are_pythons_sort_of_the_distinct_ids_whatever_the_string_type(dtype):
    from retrain.trainers.interactions import sorted_unique

    rng = np.random.default_rng(4)
    pool = ["b", "a", "B", "é", "e", "z", "Ω", "😀", "a b", "", "10", "9", "ä"]
    values = pd.Series(rng.choice(pool, 200), dtype=dtype)

    got = sorted_unique(values, "item")

    assert got.dtype == object
    assert got.tolist() == sorted(set(values.astype(object)))
    assert all(type(v) is str for v in got)


@pytest.mark.parametrize(
    "dtype", ["str", "string[pyarrow]", "large_string[pyarrow]", object, "int"]
)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunks", [1, 3])
def test_an_id_map_and_its_rows_are_sorted_unique_and_lookup_of_every_value(dtype, masked, chunks):
    import pyarrow as pa

    from retrain.trainers.interactions import id_rows, lookup, sorted_unique

    rng = np.random.default_rng(6)
    pool = ["b", "a", "é", "10", "9", "z", "", "Ω"] if dtype != "int" else ["3", "1", "20", "7"]
    raw = rng.choice(pool, 120)
    if dtype == "int":
        values = pd.Series(raw.astype("int64"))
    elif chunks > 1 and dtype is not object:
        arrow = pa.large_string() if dtype.startswith("large") else pa.string()
        parts = np.array_split(raw, chunks)
        column = pa.chunked_array([pa.array(list(part), type=arrow) for part in parts])
        values = pd.Series(pd.array(column.to_pylist(), dtype=dtype))
        values = pd.Series(type(values.array)(column) if dtype != "str" else values.array)
    else:
        values = pd.Series(raw, dtype=dtype)
    where = rng.random(120) < 0.5 if masked else None

    rows, index = id_rows(values, "item", where)

    want_index = sorted_unique(values if where is None else values[where], "item")
    assert index.dtype == want_index.dtype and index.tolist() == want_index.tolist()
    np.testing.assert_array_equal(rows, lookup(want_index, values))


def _popularity_state(model) -> dict:
    return {
        "item_index": model.item_index_,
        "user_index": model.user_index_,
        "ranking": model.ranking_,
        "scores": model.scores_,
        "seen": model.seen_.toarray(),
        "train_end": model.train_end_,
    }


@pytest.mark.parametrize("ids", [int, str])
@pytest.mark.parametrize("min_rating", [None, 3.0])
@pytest.mark.parametrize("duplicates", ["sum", "last"])
def test_the_popularity_baseline_reuses_an_als_recomputes_item_map_and_order_exactly(
    ids, min_rating, duplicates
):
    """A popularity fit given the ALS recompute of the same table (``ranked``) takes the
    recompute's item map and popularity order instead of counting them: the same baseline,
    array by array, as its own fit. Users with no positive (not in the ALS model's users) and
    ties of recent popularity are in the table; a fit that dropped duplicate rows, or with
    another min_rating or window, is not reused."""
    from retrain.trainers import PopularityRecommender

    table = taste_data(seed=3)
    # a user whose every row is below min_rating, and recent ties (two items, one user each)
    late = table["ts"].max() + pd.Timedelta(hours=1)
    extra = [(777, 100, 1.0, late), (777, 111, 1.0, late), (5, 130, 5.0, late), (6, 131, 5.0, late)]
    table = pd.concat([table, pd.DataFrame(extra, columns=table.columns)], ignore_index=True)
    table = table.assign(user=table["user"].map(ids), item=table["item"].map(ids))
    if ids is str:
        table = table.astype({"user": "str", "item": "str"})
    als = ALSTrainer(**SMALL, min_rating=min_rating, duplicates=duplicates, popularity_window="2D")
    als.fit(table)
    plain = PopularityRecommender("2D", min_rating).fit(table)
    reused = PopularityRecommender("2D", min_rating)
    assert reused.shares_ranking(als, len(table))
    reused.fit(table, ranked=als)
    for name, value in _popularity_state(plain).items():
        np.testing.assert_array_equal(_popularity_state(reused)[name], value, err_msg=name)
    assert reused.ranking_ is als.popular_items_  # taken, not counted

    # not reused: another window or min_rating, or a fit that dropped a duplicate row
    assert not PopularityRecommender("3D", min_rating).shares_ranking(als, len(table))
    assert not PopularityRecommender("2D", 4.5).shares_ranking(als, len(table))
    doubled = pd.concat([table, table.iloc[:1]], ignore_index=True)
    again = ALSTrainer(**SMALL, min_rating=min_rating, duplicates="last", popularity_window="2D")
    again.fit(doubled)
    assert not PopularityRecommender("2D", min_rating).shares_ranking(again, len(doubled))
    fallback = PopularityRecommender("2D", min_rating).fit(doubled, ranked=again)
    for name, value in _popularity_state(
        PopularityRecommender("2D", min_rating).fit(doubled)
    ).items():
        np.testing.assert_array_equal(_popularity_state(fallback)[name], value, err_msg=name)
