"""What a predict request may ask for: ``probabilities`` only of a multiclass model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.app import _inputs
from gateway.errors import BadRequest


def slot(task: str) -> SimpleNamespace:
    return SimpleNamespace(name="m", family="lightgbm", spec=SimpleNamespace(task=task))


def test_a_multiclass_model_may_be_asked_for_probabilities_and_no_other_model():
    rows = [{"x": 1.0}]
    assert _inputs(slot("multiclass"), "predict", {"rows": rows, "probabilities": True}) == {
        "rows": rows,
        "probabilities": True,
    }
    assert _inputs(slot("multiclass"), "predict", {"rows": rows}) == {"rows": rows}
    with pytest.raises(BadRequest, match="model 'm' is a regression model: it answers one number"):
        _inputs(slot("regression"), "predict", {"rows": rows, "probabilities": True})
    with pytest.raises(BadRequest, match="probabilities must be true or false, got 'yes'"):
        _inputs(slot("multiclass"), "predict", {"rows": rows, "probabilities": "yes"})
