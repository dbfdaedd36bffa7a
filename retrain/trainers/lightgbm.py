"""LightGBM trainer: from scratch, warm start (continued boosting) and refit.

Categorical features are encoded with the category list learned by the first (scratch) model of
a lineage; a category the model never saw becomes missing (NaN) instead of silently taking
another category's code. The bin boundaries are frozen the same way: every dataset of a lineage
is binned against the same reference sample of the scratch model's training rows, so a warm
increment splits on exactly the bins its champion used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd

from retrain import servable
from retrain.errors import NotFittedError, NoTreesAddedError, SchemaChangeError, TrainingError

logger = logging.getLogger(__name__)

OBJECTIVES = {"regression": "regression", "binary": "binary", "multiclass": "multiclass"}
STRATEGIES = ("scratch", "warm", "refit")
# Fixed for reproducibility: same data + same config + same seed = byte-identical booster.
REPRODUCIBLE = {"deterministic": True, "force_row_wise": True, "num_threads": 1, "verbosity": -1}
MODEL_FILE = "model.txt"
META_FILE = "encoding.json"
REFERENCE_FILE = "bin_reference.parquet"


def schema_differences(
    old_features: Sequence[str],
    old_categorical: Sequence[str],
    new_features: Sequence[str],
    new_categorical: Sequence[str],
) -> list[str]:
    """What changed between two feature schemas, in words (empty when nothing did).

    >>> for problem in schema_differences(["a", "b"], ["b"], ["a", "c"], ["a"]):
    ...     print(problem)
    feature 'c' is new
    feature 'b' was removed
    feature 'a' changed from numeric to categorical
    """
    problems = [f"feature {c!r} is new" for c in new_features if c not in old_features]
    problems += [f"feature {c!r} was removed" for c in old_features if c not in new_features]
    for col in new_features:
        if col in old_features and (col in old_categorical) != (col in new_categorical):
            before, after = (
                ("categorical", "numeric") if col in old_categorical else ("numeric", "categorical")
            )
            problems.append(f"feature {col!r} changed from {before} to {after}")
    return problems


def encode_frame(
    X: pd.DataFrame, feature_names: Sequence[str], categories: dict[str, list[str]]
) -> pd.DataFrame:
    """Columns in training order; categoricals as their frozen integer codes (unseen: NaN).

    The code every served model runs (:func:`retrain.servable.encode_frame`)."""
    try:
        return servable.encode_frame(X, feature_names, categories)
    except servable.ServableError as exc:
        raise TrainingError(str(exc)) from None


class LightGBMTrainer:
    """Gradient-boosted trees, sklearn style.

    ``strategy`` is ``scratch`` (a new model), ``warm`` (continue boosting ``init_model`` for
    ``num_boost_round`` more rounds on the new rows, with its encodings and bins) or ``refit``
    (``init_model``'s trees with leaf values refitted on the new rows). Parameters are stored as
    given; ``fit`` validates them. Learned state: ``booster_``, ``feature_names_``,
    ``categories_``, ``reference_``, ``increments_``, ``evals_result_``, ``classes_``.

    A ``multiclass`` task takes ``classes`` (the class labels as the data writes them) and y as
    class codes (positions in ``classes``: 0, 1, ...); ``predict`` returns one probability per
    class and row (rows x classes). The classes are frozen with the first (scratch) model: a
    warm start or refit keeps them and refuses another list.
    """

    booster_: lgb.Booster
    feature_names_: list[str]
    categories_: dict[str, list[str]]
    reference_: pd.DataFrame
    increments_: int
    n_train_rows_: int
    evals_result_: dict[str, dict[str, list[float]]]
    classes_: list[Any]

    def __init__(
        self,
        task: str = "regression",
        params: dict[str, Any] | None = None,
        num_boost_round: int = 200,
        categorical: Sequence[str] = (),
        random_state: int = 42,
        strategy: str = "scratch",
        init_model: LightGBMTrainer | None = None,
        refit_decay_rate: float = 0.9,
        reference_rows: int = 20_000,
        classes: Sequence[Any] = (),
    ) -> None:
        self.task = task
        self.classes = classes
        self.params = params
        self.num_boost_round = num_boost_round
        self.categorical = categorical
        self.random_state = random_state
        self.strategy = strategy
        self.init_model = init_model
        self.refit_decay_rate = refit_decay_rate
        self.reference_rows = reference_rows

    # -- helpers ----------------------------------------------------------------------------
    def _lgb_params(self) -> dict[str, Any]:
        if self.task not in OBJECTIVES:
            raise TrainingError(f"task {self.task!r} is not supported; use {sorted(OBJECTIVES)}")
        params: dict[str, Any] = {"objective": OBJECTIVES[self.task], **REPRODUCIBLE}
        if self.task == "multiclass":
            params["num_class"] = len(self.classes)
        params.update(self.params or {})
        params["seed"] = self.random_state
        return params

    def non_default_params(self) -> dict[str, Any]:
        """The parameters that differ from LightGBM's defaults (what an MLflow run logs)."""
        out = dict(self.params or {})
        out.update(
            task=self.task,
            num_boost_round=self.num_boost_round,
            seed=self.random_state,
            strategy=self.strategy,
        )
        if self.strategy == "refit":
            out["refit_decay_rate"] = self.refit_decay_rate
        if self.task == "multiclass":
            out["classes"] = ", ".join(map(str, self.classes))
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise NotFittedError("this LightGBMTrainer is not fitted yet: call fit(X, y) first")

    def encode(self, X: pd.DataFrame) -> pd.DataFrame:
        """Columns in training order; categoricals as the frozen integer codes."""
        if not hasattr(self, "categories_"):
            raise NotFittedError("this LightGBMTrainer is not fitted yet: call fit(X, y) first")
        return encode_frame(X, self.feature_names_, self.categories_)

    def encode_matrix(self, X: pd.DataFrame) -> np.ndarray:
        """:meth:`encode` as a rows x features float64 array (the same values), for
        :meth:`predict_matrix`; ``X`` may hold other columns."""
        if not hasattr(self, "categories_"):
            raise NotFittedError("this LightGBMTrainer is not fitted yet: call fit(X, y) first")
        try:
            return servable.encode_matrix(X, self.feature_names_, self.categories_)
        except servable.ServableError as exc:
            raise TrainingError(str(exc)) from None

    @property
    def lightgbm_categorical(self) -> list[str] | Literal["auto"]:
        """The categorical features as LightGBM names them (``auto``: none)."""
        names = dict(
            zip(self.feature_names_, servable.lightgbm_names(self.feature_names_), strict=True)
        )
        return [names[c] for c in self.categories_] or "auto"

    def _reference_dataset(self, params: dict[str, Any]) -> lgb.Dataset:
        return lgb.Dataset(
            self.reference_,
            categorical_feature=self.lightgbm_categorical,
            params=params,
            free_raw_data=False,
        )

    def _validate(self, X: pd.DataFrame, y: Any) -> np.ndarray:
        if not isinstance(X, pd.DataFrame):
            raise TrainingError("X must be a pandas DataFrame with named feature columns")
        if len(X) == 0:
            raise TrainingError("cannot fit on zero rows: widen the training window")
        target = np.asarray(y, dtype="float64")
        if target.shape[0] != len(X):
            raise TrainingError(f"X has {len(X)} rows but y has {target.shape[0]}")
        if np.isnan(target).any():
            raise TrainingError("y holds missing labels: drop unlabelled rows before fit")
        if self.task == "binary" and not set(np.unique(target)) <= {0.0, 1.0}:
            raise TrainingError("a binary task needs labels 0/1")
        if self.task == "multiclass":
            self._validate_classes(target)
        elif len(self.classes):
            raise TrainingError(f"classes are for a multiclass task, not {self.task!r}")
        if self.num_boost_round < 1:
            raise TrainingError("num_boost_round must be at least 1")
        if self.strategy not in STRATEGIES:
            raise TrainingError(f"strategy {self.strategy!r} is unknown; use one of {STRATEGIES}")
        unknown = [c for c in self.categorical if c not in X.columns]
        if unknown:
            raise TrainingError(f"categorical feature(s) {unknown} are not columns of X")
        if self.strategy != "scratch":
            init = self.init_model
            if init is None or not hasattr(init, "booster_"):
                raise TrainingError(
                    f"strategy {self.strategy!r} needs a fitted init_model (the champion)"
                )
            if init.task != self.task:
                raise SchemaChangeError(
                    f"the champion is a {init.task} model, this spec is {self.task}: retrain "
                    "from scratch"
                )
            problems = schema_differences(
                init.feature_names_, list(init.categories_), list(X.columns), self.categorical
            )
            if problems:
                raise SchemaChangeError(
                    "cannot warm-start from the champion: "
                    + "; ".join(problems)
                    + ". Retrain from scratch (set stateful.on_schema_change = 'scratch' to do "
                    "it automatically)"
                )
        return target

    def _validate_classes(self, target: np.ndarray) -> None:
        k = len(self.classes)
        if k < 2 or len({str(c) for c in self.classes}) != k:
            raise TrainingError(
                f"a multiclass task needs classes: two or more distinct labels, got "
                f"{list(self.classes)}"
            )
        codes = np.unique(target)
        bad = codes[(codes < 0) | (codes >= k) | (codes != np.round(codes))]
        if bad.size:
            raise TrainingError(
                f"y holds {bad[:3].tolist()}, not class codes 0..{k - 1} of classes "
                f"{list(self.classes)}: pass each label's position in classes"
            )
        init = self.init_model
        known = [str(c) for c in getattr(init, "classes_", [])]
        warm = self.strategy != "scratch" and init is not None and hasattr(init, "booster_")
        if warm and known != [str(c) for c in self.classes]:
            raise SchemaChangeError(
                f"the champion knows classes {list(getattr(init, 'classes_', []))}, this "
                f"spec lists {list(self.classes)}: a warm start keeps the classes. Retrain "
                "from scratch (set stateful.on_schema_change = 'scratch' to do it "
                "automatically)"
            )

    # -- estimator API ------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y: Sequence[float] | pd.Series | np.ndarray) -> LightGBMTrainer:
        target = self._validate(X, y)
        params = self._lgb_params()
        self.feature_names_ = [str(c) for c in X.columns]
        self.classes_ = list(self.classes)
        init = self.init_model
        if self.strategy == "scratch" or init is None:
            self.categories_ = {
                col: sorted(X[col].dropna().astype("string").unique().tolist())
                for col in self.categorical
            }
            encoded = self.encode(X)
            n_ref = min(self.reference_rows, len(encoded))
            self.reference_ = encoded.sample(n_ref, random_state=self.random_state).sort_index()
            self.increments_ = 0
        else:
            self.categories_ = {k: list(v) for k, v in init.categories_.items()}
            self.reference_ = init.reference_
            self.increments_ = init.increments_ + 1
            encoded = self.encode(X)
        self.evals_result_ = {}

        if self.strategy == "refit":
            assert init is not None
            self.booster_ = init.booster_.refit(
                encoded, target, decay_rate=self.refit_decay_rate, reference=None
            )
        else:
            dataset = lgb.Dataset(
                encoded,
                label=target,
                categorical_feature=self.lightgbm_categorical,
                reference=self._reference_dataset(params),
                params=params,
                free_raw_data=False,
            )
            self.booster_ = lgb.train(
                params,
                dataset,
                num_boost_round=self.num_boost_round,
                init_model=init.booster_ if self.strategy == "warm" and init else None,
                valid_sets=[dataset],
                valid_names=["train"],
                callbacks=[lgb.record_evaluation(self.evals_result_)],
            )
            if init is not None and self.strategy == "warm":
                self._check_trees_added(init, params, len(X))
        self.n_train_rows_ = len(X)
        return self

    def _check_trees_added(self, init: LightGBMTrainer, params: dict[str, Any], rows: int) -> None:
        """LightGBM stops without a tree when no leaf can be split: say so, do not hand back the
        champion unchanged as if it had learned from the increment."""
        if self.booster_.num_trees() > init.booster_.num_trees():
            return
        leaf = int(params.get("min_data_in_leaf", params.get("min_child_samples", 20)))
        raise NoTreesAddedError(
            f"warm start added no trees: LightGBM found no split in the increment's {rows} "
            f"row(s) (min_data_in_leaf = {leaf}: a split needs at least {2 * leaf} rows; "
            "constant features or min_gain_to_split also stop it). Replay more of the "
            "champion's newest rows with the increment (stateful.replay), let more partitions "
            "accumulate before a warm increment (a less frequent stateful schedule), lower "
            "min_data_in_leaf in the LightGBM params, use stateful.strategy = 'refit', or set "
            "stateful.compare_with_scratch = true to retrain from scratch instead"
        )

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        return self.predict_encoded(self.encode(X))

    def predict_encoded(self, encoded: pd.DataFrame) -> np.ndarray:
        """Scores of rows already encoded by :meth:`encode` (of this model, or of one with the
        same ``feature_names_`` and ``categories_``: :meth:`same_encoding`), in as many threads
        as the fit (``num_threads``, one unless the params say otherwise): on a small frame
        LightGBM's default pool costs more CPU than the trees, and each row's score does not
        depend on the threads."""
        self._check_fitted()
        threads = int(self._lgb_params().get("num_threads", 0))
        return np.asarray(self.booster_.predict(encoded, num_threads=threads), dtype="float64")

    def predict_matrix(self, encoded: np.ndarray) -> np.ndarray:
        """:meth:`predict_encoded` of rows encoded by :meth:`encode_matrix` (of this model, or
        of one with the same encoding): the same scores, without pandas' conversion."""
        self._check_fitted()
        threads = int(self._lgb_params().get("num_threads", 0))
        return np.asarray(self.booster_.predict(encoded, num_threads=threads), dtype="float64")

    def same_encoding(self, other: object) -> bool:
        """Whether ``other`` encodes a frame exactly as this model does (same features in the
        same order, same frozen categories): then one :meth:`encode` serves both."""
        return (
            isinstance(other, LightGBMTrainer)
            and hasattr(self, "categories_")
            and hasattr(other, "categories_")
            and list(self.feature_names_) == list(other.feature_names_)
            and {k: list(v) for k, v in self.categories_.items()}
            == {k: list(v) for k, v in other.categories_.items()}
        )

    def feature_importance(self) -> pd.DataFrame:
        self._check_fitted()
        return (
            pd.DataFrame(
                {
                    "feature": self.feature_names_,
                    "gain": self.booster_.feature_importance("gain"),
                    "splits": self.booster_.feature_importance("split"),
                }
            )
            .sort_values("gain", ascending=False)
            .reset_index(drop=True)
        )

    def model_string(self) -> str:
        """The booster as text: equal strings mean byte-identical models."""
        self._check_fitted()
        return str(self.booster_.model_to_string())

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        """Write the booster, the frozen encodings and the bin reference; returns the dir."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(directory / MODEL_FILE))
        self.reference_.to_parquet(directory / REFERENCE_FILE)
        meta = {
            "family": "lightgbm",
            "task": self.task,
            "params": self.params or {},
            "num_boost_round": self.num_boost_round,
            "categorical": list(self.categorical),
            "random_state": self.random_state,
            "strategy": self.strategy,
            "refit_decay_rate": self.refit_decay_rate,
            "reference_rows": self.reference_rows,
            "feature_names": self.feature_names_,
            "categories": self.categories_,
            "increments": self.increments_,
            "n_train_rows": self.n_train_rows_,
            "classes": self.classes_,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: Path) -> LightGBMTrainer:
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists() or not (directory / MODEL_FILE).exists():
            raise TrainingError(
                f"{directory} holds no saved LightGBM model ({MODEL_FILE} and {META_FILE})"
            )
        meta = json.loads(meta_path.read_text())
        model = cls(
            task=meta["task"],
            params=meta["params"],
            num_boost_round=meta["num_boost_round"],
            categorical=meta["categorical"],
            random_state=meta["random_state"],
            strategy=meta.get("strategy", "scratch"),
            refit_decay_rate=meta.get("refit_decay_rate", 0.9),
            reference_rows=meta.get("reference_rows", 20_000),
            classes=meta.get("classes", []),
        )
        model.classes_ = list(model.classes)
        model.booster_ = lgb.Booster(model_file=str(directory / MODEL_FILE))
        model.feature_names_ = meta["feature_names"]
        model.categories_ = meta["categories"]
        model.increments_ = meta.get("increments", 0)
        model.n_train_rows_ = meta["n_train_rows"]
        model.reference_ = pd.read_parquet(directory / REFERENCE_FILE)
        model.evals_result_ = {}
        return model
