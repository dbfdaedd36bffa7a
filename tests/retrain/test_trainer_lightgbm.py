from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from retrain.backtest import score
from retrain.errors import NotFittedError, TrainingError
from retrain.trainers import LightGBMTrainer

# Small leaves and groups so that 300 rows are enough to learn every category.
SMALL = {"min_data_in_leaf": 5, "min_data_per_group": 5, "cat_smooth": 1.0, "num_leaves": 7}
CATEGORY_EFFECT = {"a": 0.0, "b": 20.0, "c": 40.0, None: 80.0}


def make_data(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """y depends on x1 and strongly on the category; a tenth of the categories are missing."""
    rng = np.random.default_rng(seed)
    cats = rng.choice(np.array(["a", "b", "c", None], dtype=object), n, p=[0.3, 0.3, 0.3, 0.1])
    X = pd.DataFrame({"x1": rng.uniform(0, 1, n), "x2": rng.normal(0, 1, n), "cat": cats})
    y = 10 * X["x1"].to_numpy() + np.array([CATEGORY_EFFECT[c] for c in cats]) + rng.normal(0, 1, n)
    return X, y


def trainer(**kwargs) -> LightGBMTrainer:
    options = {"params": dict(SMALL), "num_boost_round": 20, "categorical": ["cat"]}
    options.update(kwargs)
    return LightGBMTrainer(**options)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    return make_data()


@pytest.fixture(scope="module")
def fitted(data) -> LightGBMTrainer:
    return trainer().fit(*data)


def test_init_stores_every_parameter_as_given_and_validates_nothing():
    given = {"task": "nonsense", "params": {"num_leaves": -3}, "num_boost_round": 0}

    model = LightGBMTrainer(**given)

    for name in inspect.signature(LightGBMTrainer.__init__).parameters:
        if name != "self":
            assert hasattr(model, name), f"__init__ does not store {name}"
    assert {name: getattr(model, name) for name in given} == given
    assert not [name for name in vars(model) if name.endswith("_")]


def test_fit_returns_self_and_every_learned_attribute_ends_with_an_underscore(data):
    model = trainer()
    before = dict(vars(model))

    assert model.fit(*data) is model

    learned = set(vars(model)) - set(before)
    assert {"booster_", "feature_names_", "categories_"} <= learned
    assert all(name.endswith("_") for name in learned)
    assert {name: getattr(model, name) for name in before} == before  # parameters untouched
    assert model.feature_names_ == ["x1", "x2", "cat"]
    assert model.categories_ == {"cat": ["a", "b", "c"]}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_boost_round": 0}, r"num_boost_round must be at least 1"),
        ({"task": "ranking"}, r"task 'ranking' is not supported"),
        ({"categorical": ["colour"]}, r"categorical feature\(s\) \['colour'\] are not columns"),
    ],
)
def test_invalid_parameters_are_refused_at_fit(data, kwargs, message):
    model = trainer(**kwargs)  # constructing is fine

    with pytest.raises(TrainingError, match=message):
        model.fit(*data)


def test_same_data_and_seed_give_a_byte_identical_booster(data):
    params = {**SMALL, "bagging_fraction": 0.7, "bagging_freq": 1, "feature_fraction": 0.7}

    first = trainer(params=params, random_state=7).fit(*data)
    second = trainer(params=params, random_state=7).fit(*data)

    assert first.booster_.model_to_string() == second.booster_.model_to_string()


def test_a_different_seed_gives_a_different_model_when_sampling_is_on(data):
    params = {**SMALL, "bagging_fraction": 0.7, "bagging_freq": 1, "feature_fraction": 0.7}
    X, _ = data

    first = trainer(params=params, random_state=7).fit(*data)
    other = trainer(params=params, random_state=8).fit(*data)

    assert not np.allclose(first.predict(X), other.predict(X))


def test_predict_before_fit_is_a_not_fitted_error_saying_to_call_fit(data):
    with pytest.raises(NotFittedError, match=r"not fitted yet: call fit\(X, y\) first"):
        trainer().predict(data[0])


def test_save_before_fit_is_a_not_fitted_error(tmp_path):
    with pytest.raises(NotFittedError, match=r"not fitted yet"):
        trainer().save(tmp_path / "model")


def test_an_unseen_category_is_scored_as_missing_not_as_another_category(fitted):
    row = pd.DataFrame({"x1": [0.5] * 5, "x2": [0.0] * 5, "cat": ["a", "b", "c", None, "zebra"]})

    pred = dict(zip(["a", "b", "c", "missing", "unseen"], fitted.predict(row), strict=True))

    # The model tells every known category and "missing" apart ...
    known = [pred["a"], pred["b"], pred["c"]]
    assert min(abs(pred["missing"] - value) for value in known) > 5
    # ... and an unseen category gets exactly the "missing" prediction, no category's code.
    assert pred["unseen"] == pred["missing"]
    assert np.isnan(fitted.encode(row)["cat"].iloc[4])


def test_categories_are_encoded_with_the_codes_frozen_at_fit(fitted):
    row = pd.DataFrame({"x1": [0.1, 0.1], "x2": [0.0, 0.0], "cat": ["c", "a"]})

    assert fitted.encode(row)["cat"].tolist() == [2.0, 0.0]


def test_scoring_data_without_a_training_column_is_an_error_naming_it(fitted, data):
    with pytest.raises(TrainingError, match=r"\['x2'\] are missing .* trained with x1, x2, cat"):
        fitted.predict(data[0].drop(columns=["x2"]))


def test_save_and_load_give_identical_predictions(fitted, data, tmp_path):
    X, _ = data
    scoring = pd.concat([X, pd.DataFrame({"x1": [0.3], "x2": [1.0], "cat": ["zebra"]})])

    loaded = LightGBMTrainer.load(fitted.save(tmp_path / "model"))

    np.testing.assert_array_equal(loaded.predict(scoring), fitted.predict(scoring))
    assert loaded.categories_ == fitted.categories_
    assert loaded.feature_names_ == fitted.feature_names_


def test_loading_a_folder_without_a_model_is_an_error_naming_it(tmp_path):
    with pytest.raises(TrainingError, match=r"empty holds no saved LightGBM model"):
        LightGBMTrainer.load(tmp_path / "empty")


def test_missing_labels_are_refused(data):
    X, y = data
    y = y.copy()
    y[3] = np.nan

    with pytest.raises(TrainingError, match=r"y holds missing labels"):
        trainer().fit(X, y)


def test_zero_rows_are_refused_with_the_fix(data):
    X, y = data

    with pytest.raises(TrainingError, match=r"cannot fit on zero rows: widen the training window"):
        trainer().fit(X.iloc[:0], y[:0])


def test_x_and_y_of_different_lengths_are_refused(data):
    X, y = data

    with pytest.raises(TrainingError, match=r"X has 300 rows but y has 299"):
        trainer().fit(X, y[:-1])


def test_a_binary_task_predicts_probabilities_that_rank_the_classes(data):
    X, y = data
    label = (y > np.median(y)).astype(float)

    model = trainer(task="binary").fit(X, label)
    pred = model.predict(X)

    assert ((pred > 0) & (pred < 1)).all()
    assert score("auc", label, pred) > 0.9


def test_a_binary_task_refuses_labels_other_than_0_and_1(data):
    X, _ = data

    with pytest.raises(TrainingError, match=r"binary task needs labels 0/1"):
        trainer(task="binary").fit(X, np.arange(len(X)) % 3)


def test_a_warm_increment_keeps_the_champions_trees_and_adds_its_own(fitted):
    X, y = make_data(200, seed=1)

    warm = trainer(strategy="warm", init_model=fitted, num_boost_round=5).fit(X, y)

    assert warm.booster_.num_trees() == fitted.booster_.num_trees() + 5
    assert warm.increments_ == fitted.increments_ + 1
    assert warm.categories_ == fitted.categories_


def test_a_warm_increment_too_small_to_split_is_refused_not_returned_unchanged(fitted):
    X, y = make_data(8, seed=2)  # min_data_in_leaf = 5: a split needs 10 rows

    with pytest.raises(TrainingError, match=r"added no trees.*8 row\(s\).*at least 10 rows"):
        trainer(strategy="warm", init_model=fitted, num_boost_round=5).fit(X, y)


def test_a_warm_increment_keeps_the_champions_category_codes_whatever_categories_it_brings(
    fitted,
):
    X, y = make_data(200, seed=3)
    # the increment knows none of "a"/"b" and brings a category the champion never saw
    X["cat"] = np.where(X["cat"].isin(["a", "b"]), "d", X["cat"])

    warm = trainer(strategy="warm", init_model=fitted, num_boost_round=5).fit(X, y)

    assert warm.categories_ == {"cat": ["a", "b", "c"]}
    codes = warm.encode(pd.DataFrame({"x1": 0.5, "x2": 0.0, "cat": ["a", "c", "d"]}))["cat"]
    assert codes.iloc[0] == 0.0 and codes.iloc[1] == 2.0  # as the champion coded them
    assert np.isnan(codes.iloc[2])  # unseen: missing, not the next free code


def _thresholds(model: LightGBMTrainer, feature: int, first_tree: int = 0) -> set[float]:
    """Split thresholds on one feature in the trees from ``first_tree`` on."""
    found: set[float] = set()

    def walk(node: dict) -> None:
        if "split_feature" in node:
            if node["split_feature"] == feature:
                found.add(round(float(node["threshold"]), 9))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in model.booster_.dump_model()["tree_info"][first_tree:]:
        walk(tree["tree_structure"])
    return found


def test_a_warm_increment_bins_its_rows_on_the_champions_bin_boundaries():
    coarse = {**SMALL, "max_bin": 4}
    champion = trainer(params=coarse).fit(*make_data(300))
    edges = sorted(_thresholds(champion, 0))
    assert len(edges) == 2 and edges[0] < 0.4 and edges[1] > 0.6  # x1's bins: (.., 0.36], ..
    rng = np.random.default_rng(4)
    X = pd.DataFrame(
        {"x1": rng.uniform(0.4, 0.6, 200), "x2": rng.normal(0, 1, 200), "cat": "c"}
    )  # every x1 of the increment falls in the champion's middle bin
    y = 100 * X["x1"].to_numpy() + rng.normal(0, 0.1, 200)  # and x1 is all that matters

    warm = trainer(params=coarse, strategy="warm", init_model=champion, num_boost_round=5).fit(X, y)
    alone = trainer(params=coarse).fit(X, y)

    # binned on its own the increment splits x1 inside (0.4, 0.6); binned on the champion's
    # boundaries it cannot tell its x1 values apart
    assert any(0.4 < t < 0.6 for t in _thresholds(alone, 0))
    assert _thresholds(warm, 0, first_tree=champion.booster_.num_trees()) == set()


def test_scores_in_the_fits_threads_are_the_scores_of_lightgbms_default_pool(fitted, data):
    X, _ = data
    encoded = fitted.encode(X)

    one_thread = fitted.predict_encoded(encoded)

    np.testing.assert_array_equal(one_thread, fitted.booster_.predict(encoded))
    np.testing.assert_array_equal(fitted.predict(X), one_thread)
    # the matrix path: the same encoding and the same scores, to the bit
    matrix = fitted.encode_matrix(X.assign(extra="ignored"))
    assert matrix.tobytes() == np.asfortranarray(encoded.to_numpy()).tobytes()
    assert fitted.predict_matrix(matrix).tobytes() == one_thread.tobytes()


def test_two_models_share_an_encoding_only_with_the_same_features_and_categories(data):
    X, y = data
    first = trainer().fit(X, y)
    same = trainer(random_state=7).fit(X, y)
    fewer = trainer().fit(X[X["cat"] != "c"], y[(X["cat"] != "c").to_numpy()])
    other_order = trainer().fit(X[["x2", "x1", "cat"]], y)

    assert first.same_encoding(same)
    assert not first.same_encoding(fewer)  # "c" has no code in fewer
    assert not first.same_encoding(other_order)
    assert not first.same_encoding(trainer())  # not fitted
    assert not first.same_encoding(object())
