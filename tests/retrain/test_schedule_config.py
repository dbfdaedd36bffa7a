"""The spec's [schedule] table: cron, time zone and whether scheduled runs need an operator."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrain.config import ScheduleSpec, load_spec, parse_spec
from retrain.errors import SpecError
from tests.conftest import ROOT, spec_dict


def spec_with(tmp_path: Path, **overrides: object):
    return parse_spec(spec_dict(tmp_path / "data", tmp_path / "state", **overrides))


def test_without_a_schedule_table_scheduled_runs_are_nightly_at_two_utc(tmp_path):
    spec = spec_with(tmp_path)

    assert spec.schedule == ScheduleSpec(cron="0 2 * * *", timezone="UTC", require_approval=None)


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("61 2 * * *", "Bad minute"),
        ("0 2 * *", "Wrong number of fields"),
        ("every night", "Wrong number of fields"),
        ("H 2 * * *", "Bad minute"),  # Jenkins-style hashed values: Prefect refuses them too
    ],
)
def test_a_bad_cron_expression_is_an_error_naming_schedule_cron_and_the_fix(tmp_path, cron, why):
    with pytest.raises(SpecError) as err:
        spec_with(tmp_path, **{"schedule.cron": cron})

    message = str(err.value)
    assert f"schedule.cron: not a cron expression ({why})" in message
    assert "write five fields 'minute hour day-of-month month day-of-week'" in message
    assert "schedule.cron = '0 2 * * *'" in message
    assert f"(got {cron!r})" in message


@pytest.mark.parametrize(
    ("cron", "stored"),
    [
        ("30 1 * * 1-5", "30 1 * * 1-5"),
        ("  0   3 * * *  ", "0 3 * * *"),  # whitespace is normalised
        ("@daily", "@daily"),  # macros Prefect understands are kept as written
        ("*/15 * * * *", "*/15 * * * *"),
    ],
)
def test_valid_cron_expressions_are_accepted(tmp_path, cron, stored):
    assert spec_with(tmp_path, **{"schedule.cron": cron}).schedule.cron == stored


def test_an_unknown_time_zone_is_an_error_with_the_closest_name(tmp_path):
    with pytest.raises(SpecError) as err:
        spec_with(tmp_path, **{"schedule.timezone": "Europe/Berln"})

    message = str(err.value)
    assert "schedule.timezone: not an IANA time zone; did you mean 'Europe/Berlin'?" in message
    assert "write e.g. schedule.timezone = 'UTC'" in message


def test_a_misspelt_schedule_key_names_the_right_one(tmp_path):
    with pytest.raises(SpecError, match=r"schedule\.crn: unknown key; did you mean 'cron'\?"):
        spec_with(tmp_path, **{"schedule.crn": "0 2 * * *"})


@pytest.mark.parametrize(
    ("gate", "schedule", "expected"),
    [
        (True, None, True),
        (False, None, False),
        (True, False, False),
        (False, True, True),
    ],
)
def test_scheduled_approval_follows_the_gate_unless_the_schedule_says_otherwise(
    tmp_path, gate, schedule, expected
):
    spec = spec_with(
        tmp_path, **{"gate.require_approval": gate, "schedule.require_approval": schedule}
    )

    assert spec.schedule.requires_approval(spec.gate) is expected


def test_a_toml_spec_with_a_schedule_table_loads(tmp_path):
    path = tmp_path / "model.toml"
    path.write_text(
        (ROOT / "retrain" / "demo" / "bike.toml")
        .read_text()
        .replace('cron = "0 2 * * *"', 'cron = "15 4 * * 0"')
        .replace('timezone = "UTC"', 'timezone = "America/New_York"')
    )

    schedule = load_spec(path).schedule

    assert (schedule.cron, schedule.timezone) == ("15 4 * * 0", "America/New_York")


def test_the_demo_spec_is_scheduled_nightly_and_needs_approval():
    spec = load_spec(ROOT / "retrain" / "demo" / "bike.toml")

    assert (spec.schedule.cron, spec.schedule.timezone) == ("0 2 * * *", "UTC")
    assert spec.schedule.requires_approval(spec.gate) is True
