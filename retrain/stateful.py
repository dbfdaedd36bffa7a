"""Stateful retraining policy: warm start, refit, or back to scratch. Pure, frozen decisions.

>>> from retrain.config import StatefulSpec
>>> champ = ChampionState(version="4", increments=2, train_end=None, feature_names=("a",),
...                       categorical=())
>>> plan_training("stateful", StatefulSpec(scratch_every=3), champ, ("a",), ())
TrainingPlan(strategy='warm', reason='warm start from champion v4 (increment 3 of 3)', \
parent_version='4', increments=3)
>>> plan_training("stateful", StatefulSpec(scratch_every=2), champ, ("a",), ()).strategy
'scratch'
>>> plan_training("manual", StatefulSpec(), champ, ("a",), ()).reason
'manual mode retrains from scratch'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from retrain.config import StatefulSpec
from retrain.errors import SchemaChangeError
from retrain.families.lineage import Tag, same_training

# the modes are defined in retrain.statuses; re-exported for the importers of this module
from retrain.statuses import MODES as MODES
from retrain.statuses import STATEFUL_MODES
from retrain.statuses import Mode as Mode
from retrain.trainers.lightgbm import schema_differences


@dataclass(frozen=True)
class ChampionState:
    """What the policy needs to know about the champion."""

    version: str
    increments: int
    train_end: pd.Timestamp | None
    feature_names: tuple[str, ...]
    categorical: tuple[str, ...]
    classes: tuple[str, ...] = ()  # a multiclass champion's classes (codes 0, 1, ...)
    # a trivial baseline (gate.promote_baseline): nothing continues from it, so an incremental
    # run after it is a scratch run and skips as a scheduled one does
    baseline: bool = False


@dataclass(frozen=True)
class TrainingPlan:
    strategy: str  # scratch | warm | refit
    reason: str
    parent_version: str | None
    increments: int  # warm/refit increments since the last scratch model, this one included


def scratch(reason: str) -> TrainingPlan:
    return TrainingPlan("scratch", reason, None, 0)


def plan_training(
    mode: str,
    stateful: StatefulSpec,
    champion: ChampionState | None,
    features: Sequence[str],
    categorical: Sequence[str],
    classes: Sequence[str] = (),
) -> TrainingPlan:
    """Decide how to train the next candidate (``classes``: a multiclass spec's classes, which a
    warm start keeps: another list is a schema change)."""
    if mode not in STATEFUL_MODES:
        return scratch(f"{mode} mode retrains from scratch")
    if champion is None:
        return scratch("no champion to warm-start from: first model of the lineage")
    problems = schema_differences(
        champion.feature_names, champion.categorical, features, categorical
    )
    if tuple(classes) != tuple(champion.classes):
        problems.append(
            f"classes changed from {list(champion.classes)} to {list(classes)} (a model's "
            "output has one probability per class it was trained with)"
        )
    if problems:
        detail = "; ".join(problems)
        if stateful.on_schema_change == "scratch":
            return scratch(f"schema changed since champion v{champion.version} ({detail})")
        raise SchemaChangeError(
            f"cannot warm-start from champion v{champion.version}: {detail}. Retrain from "
            "scratch (`retrain run manual`), or set stateful.on_schema_change = 'scratch'"
        )
    increments = champion.increments + 1
    if increments > stateful.scratch_every:
        return scratch(
            f"full retrain: {champion.increments} increments since the last scratch model "
            f"(stateful.scratch_every = {stateful.scratch_every})"
        )
    verb = "warm start" if stateful.strategy == "warm" else "refit"
    return TrainingPlan(
        stateful.strategy,
        f"{verb} from champion v{champion.version} (increment {increments} of "
        f"{stateful.scratch_every})",
        champion.version,
        increments,
    )


def increment_rounds(
    stateful: StatefulSpec, full_rounds: int, new_rows: int, window_rows: int
) -> int:
    """The boosting rounds a warm increment of ``new_rows`` adds: ``full_rounds`` (a scratch
    model's, ``lightgbm.num_boost_round``) scaled by the increment's share of the training
    window's ``window_rows``, rounded up, between one and ``stateful.increment_rounds``
    (``stateful.scale_rounds = false``: always ``increment_rounds``).

    A scratch model spends ``full_rounds`` on a window; rows that are a ninetieth of it get a
    ninetieth of that effort, so over a window's worth of increments a lineage adds about one
    scratch model's trees, and a day's few rows are not boosted until their noise is fitted.

    >>> spec = StatefulSpec(increment_rounds=50)
    >>> increment_rounds(spec, 300, 24, 2160), increment_rounds(spec, 300, 168, 2160)
    (4, 24)
    >>> increment_rounds(spec, 300, 2160, 2160), increment_rounds(spec, 300, 1, 10**9)
    (50, 1)
    >>> increment_rounds(StatefulSpec(scale_rounds=False), 300, 24, 2160)
    50
    """
    cap = stateful.increment_rounds
    if not stateful.scale_rounds:
        return cap
    share = new_rows / max(window_rows, 1)
    return max(1, min(cap, math.ceil(full_rounds * share - 1e-9)))


def skip_reason(
    mode: str,
    champion: ChampionState | None,
    champion_data_version: str | None,
    train_data_version: str,
    holdout_start: pd.Timestamp,
    holdout_partitions: int = 1,
    refit: bool = False,
) -> str | None:
    """Why an automated retrain has nothing to do (None: go ahead). Manual runs never skip.

    ``refit`` is ``gate.refit``: the served fit also learns the holdout's partitions, so a
    scheduled candidate whose training window is the champion's (a cadence equal to
    ``windows.holdout`` after a refitted champion) still serves new rows: no skip then.

    >>> champ = ChampionState("2", 0, pd.Timestamp("2011-04-01"), ("a",), ())
    >>> skip_reason("stateful", champ, "dv-1", "dv-9", pd.Timestamp("2011-04-01"))
    "no partition arrived after champion v2's training end (2011-04-01 00:00:00)"
    >>> print(skip_reason("stateful", champ, "dv-1", "dv-9", pd.Timestamp("2011-04-08"), 0))
    ... # doctest: +NORMALIZE_WHITESPACE
    one partition arrived after champion v2's training end (2011-04-01 00:00:00): an increment
    needs one more to be judged on
    >>> skip_reason("scheduled", champ, "dv-1", "dv-1", pd.Timestamp("2011-04-09")) is not None
    True
    >>> skip_reason("manual", champ, "dv-1", "dv-1", pd.Timestamp("2011-04-01")) is None
    True

    With ``gate.refit`` the same training window is no reason to skip: the served fit learns
    the holdout's rows, which the champion never saw.

    >>> skip_reason("scheduled", champ, "dv-1", "dv-1", pd.Timestamp("2011-04-09"), refit=True)
    >>> skip_reason("scheduled", champ, "dv-1", "dv-1", pd.Timestamp("2011-04-09"), 0, True)
    ... # doctest: +ELLIPSIS
    "the training window's data version dv-1 is the one champion v2 was trained on: no new data"
    """
    if mode == "manual" or champion is None:
        return None
    if mode in STATEFUL_MODES and not champion.baseline:
        if champion.train_end is not None and champion.train_end >= holdout_start:
            return (
                f"no partition arrived after champion v{champion.version}'s training end "
                f"({champion.train_end})"
            )
        if holdout_partitions == 0:
            return (
                f"one partition arrived after champion v{champion.version}'s training end "
                f"({champion.train_end}): an increment needs one more to be judged on"
            )
        return None
    if champion_data_version == train_data_version and not (refit and holdout_partitions):
        return (
            f"the training window's data version {train_data_version} is the one champion "
            f"v{champion.version} was trained on: no new data"
        )
    return None


def unchanged_reason(
    champion_version: str | None,
    champion_tags: Mapping[str, str],
    train_data_version: str,
    feature_spec_hash: str,
    config_hash: str,
    force: bool = False,
) -> str | None:
    """Why a retrain would only repeat the champion (None: go ahead): its training window's
    data version and its spec (feature spec and config hashes) are the champion's, so the new
    version would be the same model and its promotion would only push the last different
    champion out of ``previous``. ``force`` retrains anyway. With ``gate.refit`` the data
    versions compared are the validated fits' (``retrain.validated.data_version``): the same
    validated window means the same as-of, so the served refit would be the same model too.

    >>> tags = {Tag.DATA_VERSION: "dv-1", Tag.FEATURE_SPEC_HASH: "f" * 16,
    ...         Tag.CONFIG_HASH: "c" * 16}
    >>> print(unchanged_reason("3", tags, "dv-1", "f" * 64, "c" * 64))
    ... # doctest: +NORMALIZE_WHITESPACE
    the training data (data version dv-1) and the spec (config cccccccccccccccc) are the ones
    champion v3 was trained with: it would be the same model; pass --force to retrain anyway
    >>> unchanged_reason("3", tags, "dv-1", "f" * 64, "d" * 64) is None
    True
    >>> unchanged_reason("3", tags, "dv-1", "f" * 64, "c" * 64, force=True) is None
    True
    """
    if force or champion_version is None:
        return None
    candidate = {
        str(Tag.DATA_VERSION): train_data_version,
        str(Tag.FEATURE_SPEC_HASH): feature_spec_hash[:16],
        str(Tag.CONFIG_HASH): config_hash[:16],
    }
    if not same_training(candidate, champion_tags):
        return None
    return (
        f"the training data (data version {train_data_version}) and the spec (config "
        f"{config_hash[:16]}) are the ones champion v{champion_version} was trained with: it "
        "would be the same model; pass --force to retrain anyway"
    )
