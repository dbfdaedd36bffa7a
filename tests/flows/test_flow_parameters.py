"""Modes and statuses at the flow boundary: Prefect refuses a bad value before anything runs."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import get_args

import pytest
import yaml
from prefect.exceptions import ParameterTypeError

from flows.retrain_flow import retrain_flow
from retrain.config import load_spec
from retrain.ledger import Ledger
from retrain.statuses import MODES, Mode
from tests.conftest import spec_dict


def test_the_retrain_flow_takes_its_mode_as_the_one_mode_type():
    assert inspect.signature(retrain_flow.fn).parameters["mode"].annotation in (Mode, "Mode")
    schema = retrain_flow.parameters.model_dump()
    assert schema["properties"]["mode"]["enum"] == list(MODES) == list(get_args(Mode))


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_is_accepted(mode):
    assert (
        retrain_flow.validate_parameters({"spec_path": "spec.yaml", "mode": mode})["mode"] == mode
    )


@pytest.mark.parametrize("bad", ["nightly", "Manual", "", "live-canary"])
def test_prefect_refuses_a_bad_mode_naming_the_allowed_ones(bad):
    with pytest.raises(ParameterTypeError) as refused:
        retrain_flow.validate_parameters({"spec_path": "spec.yaml", "mode": bad})
    message = str(refused.value)
    assert "mode: Input should be 'manual', 'scheduled', 'stateful' or 'continual'" in message


def test_a_flow_run_with_a_bad_mode_fails_before_the_ledger_records_anything(
    tmp_path: Path, bike_dir: Path
):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state")))

    with pytest.raises(ParameterTypeError, match="mode: Input should be 'manual'"):
        retrain_flow(str(spec_path), mode="nightly", auto_approve=True)  # type: ignore[arg-type]

    spec = load_spec(spec_path)
    with Ledger(spec.state.ledger) as ledger:
        ledger.migrate()
        assert ledger.runs(spec.name) == []
