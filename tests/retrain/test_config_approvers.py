"""``gate.approvers``: who may answer an approval (empty: anyone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrain.config import parse_spec
from retrain.errors import SpecError
from tests.conftest import spec_dict


def test_without_approvers_anyone_may_approve(tmp_path: Path) -> None:
    spec = parse_spec(spec_dict(tmp_path, tmp_path / "state"))
    assert spec.gate.approvers == ()
    assert spec.gate.approver_allowed("anybody")


def test_with_approvers_only_the_listed_names_may_approve(tmp_path: Path) -> None:
    spec = parse_spec(spec_dict(tmp_path, tmp_path / "state", **{"gate.approvers": [" ana", "li"]}))
    assert spec.gate.approvers == ("ana", "li")
    assert spec.gate.approver_allowed("ana")
    assert spec.gate.approver_allowed(" li ")
    assert not spec.gate.approver_allowed("bob")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["ana", " "], "gate.approvers holds an empty name"),
        (["ana", "ana"], "gate.approvers lists a name twice"),
    ],
)
def test_a_bad_approver_list_is_refused_naming_the_fix(
    tmp_path: Path, names: list[str], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(spec_dict(tmp_path, tmp_path / "state", **{"gate.approvers": names}))
