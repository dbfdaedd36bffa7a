from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from implicit.evaluation import ranking_metrics_at_k

from retrain.errors import BacktestError, TrainingError
from retrain.ranking import (
    RankingBacktest,
    evaluate_ranking,
    ranking_backtest,
    relevant_items,
    user_metrics,
)
from retrain.trainers import ALSTrainer, PopularityRecommender
from retrain.trainers.interactions import lookup

T0 = pd.Timestamp("2024-05-01")
SMALL = {"factors": 8, "iterations": 10, "regularization": 0.1, "alpha": 5.0}


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows (user, item, day[, weight]) as an interaction table."""
    out = []
    for row in rows:
        user, item, day, *weight = row
        out.append((user, item, weight[0] if weight else 1.0, T0 + pd.Timedelta(days=day)))
    return pd.DataFrame(out, columns=["user", "item", "weight", "ts"])


def recs(rows: dict[str, list[int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(u, rank, item) for u, items in rows.items() for rank, item in enumerate(items, 1)],
        columns=["user", "rank", "item"],
    )


class Fixed:
    """A recommender answering fixed lists (source given), whatever it is asked."""

    def __init__(self, lists: dict, source: str = "model"):
        self.lists = lists
        self.source = source

    def recommend(self, user_ids, k=10, filter_seen=True):
        table = recs({u: self.lists.get(u, [])[:k] for u in user_ids})
        return table.assign(score=0.0, source=self.source)


# -- metrics by hand --------------------------------------------------------------------------
def test_metrics_match_a_hand_computed_example():
    relevant = pd.DataFrame({"user": ["a", "a", "b", "c"], "item": [1, 3, 9, 5]})
    given = recs({"a": [1, 2, 3, 4], "b": [7, 9, 8]})  # rank 4 of "a" is beyond k

    m = user_metrics(given, relevant, k=3).set_index("user")

    assert m.loc["a", "precision"] == pytest.approx(2 / 3)
    assert m.loc["a", "ap"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m.loc["a", "ndcg"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert m.loc["b", "precision"] == pytest.approx(1 / 3)
    assert m.loc["b", "ap"] == pytest.approx(1 / 2)
    assert m.loc["b", "ndcg"] == pytest.approx(1 / math.log2(3))
    # no recommendation at all: zero, not left out
    assert m.loc["c", ["precision", "ap", "ndcg"]].tolist() == [0.0, 0.0, 0.0]
    assert m["hits"].to_dict() == {"a": 2, "b": 1, "c": 0}


def test_a_perfect_list_scores_one_and_precision_is_capped_by_the_relevant_count():
    relevant = pd.DataFrame({"user": ["a", "a"], "item": [1, 2]})

    m = user_metrics(recs({"a": [2, 1, 7, 8]}), relevant, k=4).iloc[0]

    assert m["ap"] == pytest.approx(1.0)
    assert m["ndcg"] == pytest.approx(1.0)
    assert m["precision"] == pytest.approx(0.5)  # 2 hits in 4 slots


def test_metrics_equal_implicits_ranking_metrics_at_k_with_fixed_lists():
    rng = np.random.default_rng(0)
    n_users, n_items, k = 40, 30, 5
    train = sp.random(n_users, n_items, density=0.2, format="csr", random_state=1)
    test = sp.random(n_users, n_items, density=0.1, format="csr", random_state=2)
    test = (test - test.multiply(train.astype(bool))).tocsr()  # holdout items are unseen
    test.eliminate_zeros()
    lists = {}
    for u in range(n_users):
        unseen = np.setdiff1d(np.arange(n_items), train[u].indices)
        lists[u] = rng.permutation(unseen)[:k].tolist()

    class ImplicitView:  # what implicit's evaluation calls
        def recommend(self, userids, user_items, N=10, **_):
            ids = np.array([lists[int(u)][:N] for u in userids], dtype="int32")
            return ids, np.zeros(ids.shape, dtype="float32")

    expected = ranking_metrics_at_k(ImplicitView(), train, test, K=k, show_progress=False)
    coo = test.tocoo()
    relevant = pd.DataFrame({"user": coo.row, "item": coo.col})
    m = user_metrics(recs(lists), relevant, k)

    assert m["ap"].mean() == pytest.approx(expected["map"])
    assert m["ndcg"].mean() == pytest.approx(expected["ndcg"])
    implicit_precision = m["hits"].sum() / m["implicit_precision_den"].sum()
    assert implicit_precision == pytest.approx(expected["precision"])
    # our precision@k is hits / k per user: a different (documented) number here
    assert m["precision"].mean() != pytest.approx(expected["precision"])


# -- the backtest ------------------------------------------------------------------------------
def two_taste_history() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Odd users like items 0-9, even users 10-19; the holdout gives each user two more."""
    rng = np.random.default_rng(1)
    train_rows, holdout_rows = [], []
    for user in range(1, 25):
        liked = np.arange(0, 10) if user % 2 else np.arange(10, 20)
        order = rng.permutation(liked)
        train_rows += [(user, int(i), rng.uniform(0, 9)) for i in order[:6]]
        holdout_rows += [(user, int(i), 10 + rng.uniform(0, 3)) for i in order[6:8]]
    # user 100 is new in the holdout (cold); item 3 is this week's hit among recent users
    holdout_rows += [(100, 3, 11.0), (100, 15, 11.5)]
    return frame(train_rows), frame(holdout_rows)


def test_the_als_model_and_the_baseline_are_scored_with_cold_users_apart():
    train, holdout = two_taste_history()
    model = ALSTrainer(**SMALL, popularity_window="30D").fit(train)

    result = ranking_backtest(model, train, holdout, k=3, popularity_window="30D")

    assert isinstance(result, RankingBacktest)
    cand, base = result.candidate, result.baseline
    assert (cand.all.users, cand.warm.users, cand.cold.users) == (25, 24, 1)
    assert cand.cold.fallback_users == 1 and cand.warm.fallback_users == 0
    assert base.all.fallback_users == 0
    # the factor model knows the two tastes; the popularity list does not
    assert cand.warm.ndcg > base.warm.ndcg + 0.2
    # a cold user gets the same popularity list from both
    assert cand.cold.ndcg == pytest.approx(base.cold.ndcg)
    rows = result.table()
    assert {(r["model"], r["segment"]) for r in rows} == {
        (m, s) for m in ("candidate", "popularity") for s in ("all", "warm", "cold")
    }
    text = result.markdown()
    assert "| candidate | cold | 1 |" in text and "NDCG@3" in text


def test_metrics_agree_with_implicit_on_a_real_als_model():
    train, holdout = two_taste_history()
    holdout = holdout[holdout["user"] != 100]  # implicit only scores users it knows
    model = ALSTrainer(**SMALL).fit(train)
    test = sp.csr_matrix(
        (
            np.ones(len(holdout), dtype="float32"),
            (
                lookup(model.user_index_, holdout["user"]),
                lookup(model.item_index_, holdout["item"]),
            ),
        ),
        shape=model.seen_.shape,
    )

    expected = ranking_metrics_at_k(
        model.to_implicit(), model.seen_.astype("float32"), test, K=4, show_progress=False
    )
    ours = evaluate_ranking(model, train, holdout, k=4)

    assert ours.warm.map == pytest.approx(expected["map"], rel=1e-6)
    assert ours.warm.ndcg == pytest.approx(expected["ndcg"], rel=1e-6)
    assert ours.cold.users == 0 and math.isnan(ours.cold.ndcg)


def test_items_seen_in_training_are_not_relevant_and_users_with_only_those_are_not_active():
    train = frame([("u", 1, 0), ("u", 2, 0), ("v", 1, 0)])
    holdout = frame([("u", 1, 5), ("u", 3, 5), ("v", 1, 5)])  # u re-watches 1; v only re-watches

    relevant = relevant_items(train, holdout)

    assert relevant.values.tolist() == [["u", 3]]
    scores = evaluate_ranking(Fixed({"u": [3]}), train, holdout, k=1)
    assert scores.all.users == 1 and scores.all.precision == 1.0


def test_the_popularity_baseline_filters_what_each_user_has_seen():
    train = frame([("u", 1, 9), ("v", 1, 9), ("w", 1, 9), ("v", 2, 9), ("w", 2, 9), ("w", 3, 9)])
    holdout = frame([("u", 2, 10), ("u", 3, 10)])

    result = ranking_backtest(Fixed({}), train, holdout, k=2, popularity_window="30D")

    # u saw item 1: the baseline offers 2 and 3, both hits
    assert result.baseline.all.precision == 1.0


def test_holdout_rows_below_min_rating_are_not_relevant():
    train = frame([("u", 1, 0, 5.0)])
    holdout = frame([("u", 2, 5, 1.0), ("u", 3, 5, 4.0)])

    relevant = relevant_items(train, holdout, min_rating=3.0)

    assert relevant["item"].tolist() == [3]


def test_a_champion_is_scored_on_the_same_users():
    train, holdout = two_taste_history()
    good = ALSTrainer(**SMALL).fit(train)
    bad = Fixed({u: [19, 18, 17] for u in range(200)})

    result = ranking_backtest(good, train, holdout, k=3, champion=bad)

    assert result.champion is not None
    assert result.champion.all.users == result.candidate.all.users == 25
    assert result.candidate.all.ndcg > result.champion.all.ndcg
    assert [s.model for s in result.models] == ["candidate", "champion", "popularity"]


# -- refusals -----------------------------------------------------------------------------------
def test_a_holdout_that_is_not_after_the_training_end_is_refused():
    train = frame([("u", 1, 5)])
    holdout = frame([("u", 2, 5)])

    with pytest.raises(BacktestError, match=r"not after the training end .* time split"):
        evaluate_ranking(Fixed({}), train, holdout)


def test_a_model_trained_into_the_holdout_is_refused():
    train, holdout = two_taste_history()
    leaked = ALSTrainer(**SMALL).fit(pd.concat([train, holdout]))

    with pytest.raises(BacktestError, match=r"inside the holdout .* not be fair"):
        ranking_backtest(leaked, train, holdout)


def test_a_holdout_without_any_relevant_item_is_refused():
    train = frame([("u", 1, 0)])
    holdout = frame([("u", 1, 3)])

    with pytest.raises(BacktestError, match=r"no user has a relevant holdout item"):
        evaluate_ranking(Fixed({}), train, holdout)


def test_recommendations_without_the_needed_columns_are_refused():
    with pytest.raises(BacktestError, match=r"lack column\(s\) \['rank'\]"):
        user_metrics(pd.DataFrame({"user": [1], "item": [2]}), pd.DataFrame(), k=3)


# -- popularity -------------------------------------------------------------------------------
def test_popularity_ranks_by_distinct_recent_users_then_all_time():
    # item 1: 3 users long ago; item 2: 2 users this week; item 3: 1 user this week, 2 before
    train = frame(
        [
            *[("a", 1, 0), ("b", 1, 0), ("c", 1, 0), ("a", 1, 1)],
            *[("d", 2, 28), ("e", 2, 29), ("e", 2, 29)],
            *[("a", 3, 0), ("b", 3, 0), ("f", 3, 29)],
        ]
    )

    model = PopularityRecommender(window="7D").fit(train)
    out = model.recommend(["new"], k=3)

    assert out["item"].tolist() == [2, 3, 1]
    assert out["score"].tolist() == [2.0, 1.0, 0.0]
    assert set(out["source"]) == {"popularity"}
    mixed = model.recommend(["d", "new", "a"], k=3)
    assert mixed.groupby("user", sort=False)["item"].agg(list).to_dict() == {
        "d": [3, 1],  # d saw 2
        "new": [2, 3, 1],
        "a": [2],  # a saw 1 and 3
    }


def test_popularity_window_must_be_a_duration():
    with pytest.raises(TrainingError, match=r"popularity window 'lately' is not a duration"):
        PopularityRecommender(window="lately").fit(frame([("u", 1, 0)]))


def _merge_user_metrics(recommendations, relevant, k):
    """The former pandas implementation (merges and group-bys): the reference the vectorised
    ``user_metrics`` must reproduce exactly."""
    n_relevant = relevant.groupby("user", sort=False).size().rename("relevant")
    recs = recommendations.loc[recommendations["rank"] <= k, ["user", "rank", "item"]]
    recs = recs.drop_duplicates(["user", "item"]).sort_values(["user", "rank"], kind="stable")
    recs = recs[recs["user"].isin(n_relevant.index)]
    flagged = recs.merge(relevant.assign(hit=1), on=["user", "item"], how="left")
    hit = flagged["hit"].fillna(0).to_numpy(dtype="float64")
    rank = flagged["rank"].to_numpy(dtype="float64")
    cum_hits = pd.Series(hit).groupby(flagged["user"].to_numpy(), sort=False).cumsum().to_numpy()
    per_rec = pd.DataFrame(
        {
            "user": flagged["user"].to_numpy(),
            "hit": hit,
            "ap": hit * cum_hits / rank,
            "dcg": hit / np.log2(rank + 1.0),
        }
    )
    sums = per_rec.groupby("user", sort=False)[["hit", "ap", "dcg"]].sum()
    out = n_relevant.to_frame().join(sums, how="left").fillna(0.0)
    den = np.minimum(out["relevant"].to_numpy(), k)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))[den - 1]
    return pd.DataFrame(
        {
            "user": out.index.to_numpy(),
            "relevant": out["relevant"].to_numpy(dtype="int64"),
            "hits": out["hit"].to_numpy(dtype="int64"),
            "precision": out["hit"].to_numpy() / k,
            "ap": out["ap"].to_numpy() / den,
            "ndcg": out["dcg"].to_numpy() / ideal,
            "implicit_precision_den": den,
        }
    )


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_user_metrics_match_the_merge_implementation(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 8))
    users = [f"u{i}" for i in range(40)]
    relevant = pd.DataFrame(
        {"user": rng.choice(users[:30], 150), "item": rng.integers(0, 60, 150).astype(str)}
    ).drop_duplicates()
    # lists longer than k, repeated items, users not in relevant, one user without any list
    n = 500
    recs = pd.DataFrame(
        {
            "user": rng.choice(users[1:], n),
            "rank": rng.integers(1, k + 4, n),
            "item": rng.integers(0, 60, n).astype(str),
        }
    )
    if seed % 2:
        recs["user"] = recs["user"].astype("string")
        relevant = relevant.astype("string")

    got = user_metrics(recs, relevant, k)
    want = _merge_user_metrics(recs, relevant, k)

    pd.testing.assert_frame_equal(got, want, check_exact=True, check_dtype=False)
    assert got.dtypes.drop("user").equals(want.dtypes.drop("user"))
    # the relevant side computed once and shared by several models: the same scores
    from retrain.ranking import RelevantUsers

    shared = RelevantUsers.of(relevant)
    for lists in (recs, recs.iloc[::-1], recs.iloc[: n // 3]):
        alone = user_metrics(lists, relevant, k)
        pd.testing.assert_frame_equal(user_metrics(lists, relevant, k, shared), alone)


def test_a_segments_means_are_pandas_means_of_its_rows_without_nan():
    from retrain.ranking import _segment

    rng = np.random.default_rng(3)
    metrics = pd.DataFrame(
        {
            "precision": rng.uniform(0, 1, 50),
            "ap": rng.uniform(0, 1, 50),
            "ndcg": np.where(rng.uniform(0, 1, 50) < 0.2, np.nan, rng.uniform(0, 1, 50)),
        }
    )
    fallback = rng.uniform(0, 1, 50) < 0.3
    for mask in (rng.uniform(0, 1, 50) < 0.5, np.ones(50, bool), np.isnan(metrics["ndcg"])):
        got = _segment(metrics, mask, fallback)

        part = metrics[mask]
        want = (part["precision"].mean(), part["ap"].mean(), part["ndcg"].mean())
        assert got.users == int(mask.sum())
        assert got.fallback_users == int(fallback[mask].sum())
        np.testing.assert_array_equal((got.precision, got.map, got.ndcg), want)


def _relevant_by_merge(train, holdout, min_rating=None):
    """relevant_items as it was written first: a left merge with an indicator."""
    from retrain.trainers.interactions import positive_mask

    weights = holdout["weight"].to_numpy(dtype="float64")
    pairs = holdout.loc[positive_mask(weights, min_rating), ["user", "item"]].drop_duplicates()
    seen = train[["user", "item"]].drop_duplicates()
    merged = pairs.merge(seen, on=["user", "item"], how="left", indicator=True)
    return merged.loc[merged["_merge"] == "left_only", ["user", "item"]].reset_index(drop=True)


@pytest.mark.parametrize("ids", ["string", "str", "int64", "object"])
@pytest.mark.parametrize("min_rating", [None, 3.0, 9.0])
def test_relevant_pairs_are_the_holdout_positives_a_merge_finds_unseen(min_rating, ids):
    rng = np.random.default_rng(5)

    def id_values(pool, n):
        values = rng.choice(pool, n)
        return pd.array(values.astype("int64") if ids == "int64" else values, dtype=ids)

    def rows(n, start):
        return pd.DataFrame(
            {
                "user": id_values(["1", "2", "3", "4", "5", "6"], n),
                "item": id_values([f"{j + 10}" for j in range(12)], n),
                "weight": rng.choice([0.0, 1.0, 3.0, 5.0], n),
                "ts": pd.Timestamp(start) + pd.to_timedelta(np.arange(n), unit="min"),
            }
        )

    train, holdout = rows(80, "2024-01-01"), rows(40, "2024-02-01")

    got = relevant_items(train, holdout, min_rating)

    pd.testing.assert_frame_equal(got, _relevant_by_merge(train, holdout, min_rating))
    assert min_rating != 9.0 or got.empty


@pytest.mark.parametrize(
    ("values", "of"),
    [
        (pd.Series(["a", "b", None, "d"], dtype="str"), pd.Index(["b", "a", "b"], dtype="str")),
        (pd.Series(["a", "b", None], dtype="str"), np.array(["b", None], dtype=object)),
        (pd.Series(["a", "b"], dtype="str"), np.array([])),
        (pd.Series(["1", "2"], dtype="str"), [1, "2"]),
        (pd.Series(["a", "b"], dtype=object), pd.Series(["b", "c"], dtype="str")),
        (pd.Series([1, 2, 3]), pd.Series([3, 3, 1])),
        (pd.Series([1.0, np.nan]), [np.nan]),
        (pd.Series(["a", None, "c"], dtype="str"), pd.Series(["c", None], dtype="str")),
        (
            pd.Series(["a", "b", None], dtype="large_string[pyarrow]"),
            pd.Index(["b", "z"], dtype="string[pyarrow]"),
        ),
    ],
)
def test_membership_is_what_pandas_isin_says(values, of):
    from retrain.ranking import member

    assert member(values, of).tolist() == values.isin(of).to_numpy().tolist()


@pytest.mark.parametrize("keys_dtype", ["str", "string[pyarrow]", "large_string[pyarrow]", object])
@pytest.mark.parametrize(
    "values_dtype", ["str", "string[pyarrow]", "large_string[pyarrow]", object]
)
@pytest.mark.parametrize("with_null", [False, True])
def test_positions_among_distinct_keys_are_pandas_get_indexer_whatever_the_string_type(
    keys_dtype, values_dtype, with_null
):
    from retrain.ranking import positions

    rng = np.random.default_rng(2)
    keys = pd.Index(["k3", "k1", "k7", "k2"] + ([None] if with_null else []), dtype=keys_dtype)
    values = pd.Series(
        [*rng.choice(["k1", "k2", "k3", "k9", "k7", ""], 300), *([None] if with_null else [])],
        dtype=values_dtype,
    )

    got = positions(keys, values)

    want = keys.get_indexer(values)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("ids", [int, str])
def test_the_segment_table_is_each_models_own_scoring_with_its_warm_mask_found_once(ids):
    """ranking_backtest finds the scored users and their warm mask once for the three models
    (the warm mask by one lookup of the training rows' users among the scored ones) and, with
    ``train_checked``, does not check the training table again: the same table as scoring each
    model on its own against the distinct training users (``_score`` with ``warm_users``)."""
    from retrain.ranking import _score

    train, holdout = two_taste_history()
    train = train.assign(user=train["user"].map(ids), item=train["item"].map(ids))
    holdout = holdout.assign(user=holdout["user"].map(ids), item=holdout["item"].map(ids))
    model = ALSTrainer(**SMALL, popularity_window="30D").fit(train)
    champion = ALSTrainer(**{**SMALL, "factors": 4}, popularity_window="30D").fit(train)
    baseline = PopularityRecommender("30D").fit(train)
    relevant = relevant_items(train, holdout)
    warm_users = pd.Index(train["user"].unique())
    want = [
        _score("candidate", model, relevant, warm_users, 3, "popularity"),
        _score("champion", champion, relevant, warm_users, 3, "popularity"),
        _score("popularity", baseline, relevant, warm_users, 3, "_none_"),
    ]
    assert want[0].warm.users == 24 and want[0].cold.users == 1  # both segments scored
    # the users a fallback served, as the rows' source column said them (pandas' ==)
    users = relevant["user"].drop_duplicates()
    lists = model.recommend(users.tolist(), k=3)
    fell_back = lists.loc[lists["source"] == "popularity", "user"].unique()
    assert want[0].all.fallback_users == users.isin(fell_back).sum() == 1
    assert want[2].all.fallback_users == 0

    for checked in (False, True):
        got = ranking_backtest(
            model, train, holdout, k=3, popularity_window="30D", champion=champion,
            baseline=baseline, train_checked=checked,
        )  # fmt: skip
        # NaN-aware and exact
        pd.testing.assert_frame_equal(
            pd.DataFrame(got.table()),
            pd.DataFrame(RankingBacktest(3, "", "", "", "", *want[::2], want[1]).table()),
            check_exact=True,
        )


def test_the_training_table_is_checked_unless_the_caller_checked_it():
    train, holdout = two_taste_history()
    bad = train.assign(weight=-1.0)
    baseline = PopularityRecommender("30D").fit(train)

    with pytest.raises(BacktestError, match="negative weights"):
        ranking_backtest(Fixed({}), bad, holdout, k=2, baseline=baseline)
    # the holdout is always checked
    with pytest.raises(BacktestError, match="negative weights"):
        ranking_backtest(
            Fixed({}), train, holdout.assign(weight=-1.0), k=2, baseline=baseline,
            train_checked=True,
        )  # fmt: skip
