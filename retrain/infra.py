"""Infra validation: does the registered candidate answer over a real model server?

Before promotion (TFX's InfraValidator) the candidate is served by ``mlflow models serve`` in a
subprocess, in an environment that holds only the model's declared requirements, and sent raw
holdout rows over HTTP; its answers must equal what the model answers in this process. The
edges run the server (``registry.infra``); this module decides: when the check runs, whether
the answers match, and what a failure does to the gate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from retrain.backtest import BacktestResult
from retrain.config import GateSpec
from retrain.families.lineage import Tag

# how close a served float must be to the in-process one (JSON carries 17 significant digits)
RTOL = 1e-9


@dataclass(frozen=True)
class InfraCheck:
    """The outcome of serving one candidate: passed or why not, at what cost."""

    passed: bool
    reason: str
    seconds: float
    rows: int

    def tags(self) -> dict[str, str]:
        return {
            str(Tag.INFRA_VALIDATION): "passed" if self.passed else "failed",
            str(Tag.INFRA_VALIDATION_REASON): self.reason[:5000],
            str(Tag.INFRA_VALIDATION_SECONDS): f"{self.seconds:.1f}",
        }


def infra_wanted(gate: GateSpec, in_deployment: bool) -> bool:
    """``gate.infra_validation``: ``deployments`` (default) checks the runs of a deployment
    (``retrain serve``) only, ``always`` every run, ``never`` none."""
    setting = gate.infra_validation
    return setting == "always" or (setting == "deployments" and in_deployment)


def compare_answers(expected: Any, served: Any) -> str | None:
    """Why the served answers differ from the in-process ones (None: they match).

    Predictions (one number per row) must be equal up to :data:`RTOL`; recommendation tables
    must have the same rows (users, ranks, items, sources) and scores up to :data:`RTOL`.
    """
    if isinstance(expected, pd.DataFrame):
        got = pd.DataFrame(served)
        if list(got.columns) != list(expected.columns) or len(got) != len(expected):
            return (
                f"the server answered {len(got)} row(s) with columns {list(got.columns)}, the "
                f"model in process {len(expected)} with {list(expected.columns)}"
            )
        for col in expected.columns:
            want, have = expected[col].to_numpy(), got[col].to_numpy()
            if pd.api.types.is_float_dtype(expected[col]):
                same = np.isclose(have.astype("float64"), want, rtol=RTOL, atol=0.0)
            else:
                same = np.asarray([str(a) == str(b) for a, b in zip(have, want, strict=True)])
            if not same.all():
                first = int(np.flatnonzero(~same)[0])
                return (
                    f"column {col!r} differs in {int((~same).sum())} row(s), e.g. row {first}: "
                    f"served {have[first]!r}, in process {want[first]!r}"
                )
        return None
    labels = np.asarray(expected).ravel()
    if labels.dtype.kind not in "fiub":  # a multiclass model's classes, written as text
        got_labels = np.asarray(served, dtype=object).ravel()
        if got_labels.shape != labels.shape:
            return f"the server answered {got_labels.size} class(es) for {labels.size} row(s)"
        differ = np.flatnonzero([str(a) != str(b) for a, b in zip(got_labels, labels, strict=True)])
        if differ.size:
            return (
                f"{differ.size} of {labels.size} class(es) differ, e.g. row {differ[0]}: served "
                f"{got_labels[differ[0]]!r}, in process {labels[differ[0]]!r}"
            )
        return None
    want = np.asarray(expected, dtype="float64").ravel()
    try:
        have = np.asarray(served, dtype="float64").ravel()
    except (TypeError, ValueError):
        return f"the server answered {str(served)[:200]!r}, not one number per row"
    if have.shape != want.shape:
        return f"the server answered {have.size} prediction(s) for {want.size} row(s)"
    same = np.isclose(have, want, rtol=RTOL, atol=0.0, equal_nan=True)
    if not same.all():
        first = int(np.flatnonzero(~same)[0])
        return (
            f"{int((~same).sum())} of {want.size} prediction(s) differ, e.g. row {first}: "
            f"served {have[first]!r}, in process {want[first]!r}"
        )
    return None


def gate_with_infra(result: BacktestResult, check: InfraCheck | None) -> BacktestResult:
    """The backtest verdict with the infra check as one more gate check: a candidate that
    fails it is refused, with the reason, like one that lost the backtest."""
    if check is None:
        return result
    if check.passed:
        return replace(result, reasons=(*result.reasons, check.reason))
    return replace(result, passed=False, reasons=(*result.reasons, check.reason))
