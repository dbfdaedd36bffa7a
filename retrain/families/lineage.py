"""Lineage tags: the keys a registered version carries, defined once, read through one accessor.

Every key is a member of :class:`Tag`; the per-metric and per-label keys are built by
:func:`backtest_key` and :func:`label_key`. :class:`Lineage` reads a version's tags with types
(timestamps, ints, tuples, ``None`` for "none"), so no caller parses a tag string itself.

>>> lineage = Lineage({Tag.WINDOW_END: "2011-06-01 00:00:00", Tag.PARENT_VERSION: "none"})
>>> lineage.window_end
Timestamp('2011-06-01 00:00:00')
>>> lineage.parent_version is None
True
>>> backtest_key("rmse", "candidate")
'retrain.backtest.rmse.candidate'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, get_args

import pandas as pd

if TYPE_CHECKING:
    from retrain.config import ModelSpec
    from retrain.families.spine import Evaluated, Prepared, Trained

PREFIX = "retrain."
NONE = "none"


class Tag(StrEnum):
    """Every fixed key of a version's tags (a ``str``: usable wherever a tag key is)."""

    MODE = "retrain.mode"
    REASON = "retrain.reason"
    ACTOR = "retrain.actor"
    FAMILY = "retrain.family"
    DATA_VERSION = "retrain.data_version"
    FEATURE_SPEC_HASH = "retrain.feature_spec_hash"
    CONFIG_HASH = "retrain.config_hash"  # the whole spec but its state and source locations
    WINDOW_START = "retrain.window_start"
    WINDOW_END = "retrain.window_end"
    ROWS = "retrain.rows"
    PARTITIONS = "retrain.partitions"
    HOLDOUT_START = "retrain.holdout_start"
    HOLDOUT_END = "retrain.holdout_end"
    HOLDOUT_DATA_VERSION = "retrain.holdout_data_version"
    STRATEGY = "retrain.strategy"
    STRATEGY_REASON = "retrain.strategy_reason"
    INCREMENTS = "retrain.increments"
    PARENT_VERSION = "retrain.parent_version"
    CHAMPION_AT_TRAINING = "retrain.champion_at_training"
    DATA_VERSIONS = "retrain.data_versions"
    DATA_END = "retrain.data_end"  # the last training row (retrain.freshness)
    REFIT = "retrain.refit"  # "true": the served fit is the validated recipe refitted
    GATE = "retrain.gate"
    # "baseline": the version is the family's trivial baseline (gate.promote_baseline); its
    # kind (mean, majority, positive_rate, class_priors, popularity) and the candidate it beat
    KIND = "retrain.kind"
    BASELINE = "retrain.baseline"
    BEATEN_CANDIDATE = "retrain.baseline.beaten_candidate"
    TRIGGER_CHECK = "retrain.trigger_check"
    # written by the registry when a promotion is decided
    APPROVAL = "retrain.approval"
    APPROVER = "retrain.approver"
    APPROVAL_COMMENT = "retrain.approval_comment"
    APPROVAL_AUTOMATIC = "retrain.approval_automatic"
    DECISION = "retrain.decision"
    MODEL_NAME = "retrain.model_name"
    # a binary label mapped to 0/1 by the spec (positive / labels): the model predicts the
    # probability of the values mapped to 1, e.g. "UP = 1, other values = 0"
    LABEL_MAPPING = "retrain.label_mapping"
    # written by the registry at registration: sha256 of the model's files (registry.trust)
    MODEL_SHA256 = "retrain.model_sha256"
    # with gate.refit: the fit the gate validated (the served one also learned the holdout)
    VALIDATED_WINDOW_START = "retrain.validated.window_start"
    VALIDATED_WINDOW_END = "retrain.validated.window_end"
    VALIDATED_DATA_END = "retrain.validated.data_end"
    VALIDATED_DATA_VERSION = "retrain.validated.data_version"
    VALIDATED_ROWS = "retrain.validated.rows"
    # the champion counterpart the gate judged this version against (champion_comparison):
    # served | validated | none, its training end, and the holdout rows judged
    GATE_CHAMPION_FIT = "retrain.gate.champion_fit"
    GATE_CHAMPION_TRAIN_END = "retrain.gate.champion_train_end"
    GATE_JUDGED_START = "retrain.gate.judged_start"
    GATE_JUDGED_END = "retrain.gate.judged_end"
    # the served model's answers checked in a real serving process (retrain.infra)
    INFRA_VALIDATION = "retrain.infra_validation"
    INFRA_VALIDATION_REASON = "retrain.infra_validation.reason"
    INFRA_VALIDATION_SECONDS = "retrain.infra_validation.seconds"
    # the live test's decision on a challenger (registry.live)
    LIVE = "retrain.live"
    # the Prefect flow run that registered the version (flows.links)
    FLOW_RUN_URL = "retrain.prefect.flow_run_url"
    FLOW_RUN_ID = "retrain.prefect.flow_run_id"


Role = Literal["candidate", "champion", "baseline"]
ROLE_SUFFIXES = tuple(f".{role}" for role in get_args(Role))


def backtest_key(metric: str, role: Role) -> str:
    """The tag holding one model's backtest metric, e.g. ``retrain.backtest.rmse.candidate``."""
    return f"{PREFIX}backtest.{metric}.{role}"


def label_key(stat: str) -> str:
    """The tag holding one statistic of the training labels, e.g. ``retrain.label.mean``."""
    return f"{PREFIX}label.{stat}"


def _timestamp(value: str | None) -> pd.Timestamp | None:
    return pd.Timestamp(value) if value else None


@dataclass(frozen=True)
class Lineage:
    """A version's tags, read with types. ``tags`` is any mapping of tag key to string."""

    tags: Mapping[str, str]

    def get(self, key: Tag | str, default: str = "") -> str:
        return self.tags.get(str(key), default)

    @property
    def mode(self) -> str:
        return self.get(Tag.MODE)

    @property
    def data_version(self) -> str | None:
        return self.get(Tag.DATA_VERSION) or None

    @property
    def is_baseline(self) -> bool:
        """The version is a trivial baseline (``retrain.kind = baseline``)."""
        return self.get(Tag.KIND) == "baseline"

    @property
    def data_versions(self) -> tuple[str, ...]:
        """Every data version the weights have seen (the older single tag if that is all)."""
        text = self.get(Tag.DATA_VERSIONS) or self.get(Tag.DATA_VERSION)
        return tuple(v for v in text.split(",") if v)

    @property
    def window_start(self) -> pd.Timestamp | None:
        return _timestamp(self.get(Tag.WINDOW_START))

    @property
    def window_end(self) -> pd.Timestamp | None:
        return _timestamp(self.get(Tag.WINDOW_END))

    @property
    def validated_window_end(self) -> pd.Timestamp | None:
        """With ``gate.refit``: the end of the fit the gate validated (None: not refitted)."""
        return _timestamp(self.get(Tag.VALIDATED_WINDOW_END))

    @property
    def holdout_end(self) -> pd.Timestamp | None:
        return _timestamp(self.get(Tag.HOLDOUT_END))

    @property
    def strategy(self) -> str:
        return self.get(Tag.STRATEGY, "scratch")

    @property
    def increments(self) -> int:
        return int(self.get(Tag.INCREMENTS, "0") or 0)

    @property
    def parent_version(self) -> str | None:
        value = self.get(Tag.PARENT_VERSION, NONE)
        return None if value in ("", NONE) else value

    @property
    def data_end(self) -> pd.Timestamp | None:
        """The last training row; for versions tagged before ``retrain.data_end`` existed, the
        end of the training window."""
        return _timestamp(self.get(Tag.DATA_END) or self.get(Tag.WINDOW_END))

    @property
    def gate(self) -> str:
        return self.get(Tag.GATE)

    @property
    def decision(self) -> str | None:
        return self.get(Tag.DECISION) or None

    def backtest(self, metric: str, role: Role = "candidate") -> float | None:
        value = self.get(backtest_key(metric, role))
        return float(value) if value else None

    @property
    def metric(self) -> str | None:
        """The metric the candidate was backtested on (``rmse``, ...), None if none is tagged."""
        for key in self.tags:
            if key.startswith(f"{PREFIX}backtest.") and key.endswith(".candidate"):
                return key.removeprefix(f"{PREFIX}backtest.").removesuffix(".candidate")
        return None

    def backtests(self) -> dict[str, float]:
        """Every backtest metric among the tags, keyed without the prefix
        (``backtest.mae.candidate``); tags hold 6 significant digits."""
        out: dict[str, float] = {}
        for key, value in self.tags.items():
            if key.startswith(f"{PREFIX}backtest.") and key.endswith(ROLE_SUFFIXES):
                try:
                    out[key.removeprefix(PREFIX)] = float(value)
                except ValueError:
                    continue
        return out

    @property
    def training_data_version(self) -> str | None:
        """The data version of the fit the gate judged: the training window's, or with
        ``gate.refit`` the validated fit's (the served one also learned the holdout)."""
        return self.get(Tag.VALIDATED_DATA_VERSION) or self.get(Tag.DATA_VERSION) or None


def training_data_version(tags: Mapping[str, str]) -> str | None:
    """The data version of the fit the gate judged: the training window's, or with
    ``gate.refit`` the validated fit's (the served one also learned the holdout)."""
    return Lineage(tags).training_data_version


def same_training(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Two versions trained on the same data with the same spec: the same model (a seeded fit
    is byte-identical, ``retrain rebuild``). Unknown (a tag missing) is never the same.

    >>> one = {Tag.DATA_VERSION: "dv1", Tag.FEATURE_SPEC_HASH: "f", Tag.CONFIG_HASH: "c"}
    >>> same_training(one, dict(one)), same_training(one, {**one, Tag.CONFIG_HASH: "d"})
    (True, False)
    >>> same_training({Tag.DATA_VERSION: "dv1"}, {Tag.DATA_VERSION: "dv1"})
    False
    """
    keys = (Tag.FEATURE_SPEC_HASH, Tag.CONFIG_HASH)
    data = training_data_version(a)
    return (
        data is not None
        and data == training_data_version(b)
        and all(a.get(str(k)) and a.get(str(k)) == b.get(str(k)) for k in keys)
    )


def lineage_tags(
    spec: ModelSpec,
    mode: str,
    reason: str,
    trained: Trained,
    prepared: Prepared,
    evaluated: Evaluated,
    champion_version: str | None,
    actor: str,
) -> dict[str, str]:
    """Tags of a new model version: enough to say, months later, which data, who, why."""
    r = evaluated.result
    tags = {
        Tag.MODE: mode,
        Tag.REASON: reason,
        Tag.ACTOR: actor,
        Tag.FAMILY: spec.family,
        Tag.DATA_VERSION: trained.window.version,
        Tag.FEATURE_SPEC_HASH: prepared.spec_hash[:16],
        Tag.CONFIG_HASH: spec.config_hash()[:16],
        Tag.WINDOW_START: str(trained.window.start),
        Tag.WINDOW_END: str(trained.window.end),
        Tag.DATA_END: str(trained.data_end or trained.window.end),
        Tag.ROWS: str(trained.rows),
        Tag.PARTITIONS: str(len(trained.window.partitions)),
        Tag.HOLDOUT_START: str(prepared.holdout.start),
        Tag.HOLDOUT_END: str(prepared.holdout.end),
        Tag.HOLDOUT_DATA_VERSION: prepared.holdout.version,
        Tag.STRATEGY: trained.plan.strategy,
        Tag.STRATEGY_REASON: trained.plan.reason,
        Tag.INCREMENTS: str(trained.plan.increments),
        Tag.PARENT_VERSION: trained.plan.parent_version or NONE,
        Tag.CHAMPION_AT_TRAINING: champion_version or NONE,
        Tag.DATA_VERSIONS: ",".join(trained.data_versions),
        Tag.GATE: "passed" if r.passed else "failed",
        backtest_key(r.metric, "candidate"): f"{r.candidate:.6g}",
        backtest_key(r.metric, "baseline"): f"{r.baseline:.6g}",
    }
    out = {str(k): v for k, v in tags.items()}
    for key, value in trained.label_stats.items():
        out[label_key(key)] = f"{value:.6g}"
    if spec.label_mapping is not None:
        out[str(Tag.LABEL_MAPPING)] = spec.label_mapping
    if r.champion is not None:
        out[backtest_key(r.metric, "champion")] = f"{r.champion:.6g}"
    return out


def refit_tags(validated: Trained) -> dict[str, str]:
    """Tags of a served fit (``gate.refit``) about the fit the gate validated: the backtest
    tags describe THAT fit (trained before the holdout), the window tags the served one."""
    return {
        str(Tag.REFIT): "true",
        str(Tag.VALIDATED_WINDOW_START): str(validated.window.start),
        str(Tag.VALIDATED_WINDOW_END): str(validated.window.end),
        str(Tag.VALIDATED_DATA_END): str(validated.data_end or validated.window.end),
        str(Tag.VALIDATED_DATA_VERSION): validated.window.version,
        str(Tag.VALIDATED_ROWS): str(validated.rows),
    }
