"""The manual retrain flow on a real Prefect server, a real MLflow registry and real data."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
)
from prefect.flow_runs import resume_flow_run

from flows.retrain_flow import make_registry, retrain_flow
from retrain.config import load_spec
from retrain.errors import SchemaError
from retrain.ledger import Ledger
from tests.conftest import spec_dict
from tests.flows.conftest import artifacts_of, run_flow

AS_OF = "2011-04-29"


def write_spec(tmp_path: Path, bike_dir: Path, **overrides: Any) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **overrides)))
    return path


def registry_for(spec_path: Path):
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    return make_registry(spec, ledger), ledger, spec


def test_first_manual_retrain_beats_the_baseline_and_becomes_champion(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir)

    outcome, flow_run_id = run_flow(
        retrain_flow, str(spec_path), as_of=AS_OF, auto_approve=True, actor="ci"
    )

    registry, ledger, spec = registry_for(spec_path)
    assert outcome["promoted"] and outcome["gate_passed"]
    assert outcome["champion"] is None
    assert outcome["candidate"] < outcome["baseline"]
    assert registry.aliases() == {"champion": outcome["version"]}
    tags = registry.version(outcome["version"]).tags
    assert tags["retrain.data_version"] == outcome["data_version"]
    assert tags["retrain.window_end"].startswith("2011-04-22")  # 7-day holdout before as_of
    assert tags["retrain.parent_version"] == "none"
    assert tags["retrain.approval"] == "approved"
    [run] = ledger.runs(spec.name)
    assert (run.status, run.model_version, run.promoted) == ("promoted", outcome["version"], True)
    [verdict] = artifacts_of(flow_run_id, "bike-test-backtest")
    assert "Backtest PASSED" in verdict.data
    [plot] = artifacts_of(flow_run_id, "bike-test-backtest-plot")
    # the plot itself, inline on the flow run: a PNG the UI shows without MLflow access
    assert plot.type == "image" and plot.data.startswith("data:image/png;base64,")
    assert base64.b64decode(plot.data.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_run_reuses_the_feature_cache_and_is_compared_with_the_champion(
    tmp_path, bike_dir
):
    spec_path = write_spec(tmp_path, bike_dir)
    first = retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True)
    assert first["features_computed"] > 0

    second = retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True, force=True)

    assert second["features_computed"] == 0
    assert second["features_cached"] == first["features_computed"]
    # same data version, same seed: the same model, so exactly as good as the champion
    assert second["data_version"] == first["data_version"]
    assert second["champion"] == pytest.approx(second["candidate"])
    registry, _, _ = registry_for(spec_path)
    tags = registry.version(second["version"]).tags
    assert tags["retrain.champion_at_training"] == first["version"]
    assert tags["retrain.parent_version"] == "none"  # scratch: no weights inherited
    # promoted, the same model does not push the last different champion out of `previous`
    assert registry.aliases().get("previous") is None


def test_a_rerun_on_the_champions_data_and_spec_is_skipped_unless_forced(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir)
    first = retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True)

    again = retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True)

    assert again["status"] == "skipped"
    assert f"are the ones champion v{first['version']} was trained with" in again["decision"]
    assert "--force" in again["decision"]
    registry, ledger, spec = registry_for(spec_path)
    assert [v.version for v in registry.versions()] == [first["version"]]
    assert [r.status for r in ledger.runs(spec.name)] == ["skipped", "promoted"]
    # another spec (more trees) on the same data is a different model: it runs
    changed = retrain_flow(
        str(spec_path),
        as_of=AS_OF,
        auto_approve=True,
        overrides={"lightgbm.num_boost_round": 7},
    )
    assert changed["status"] in ("promoted", "rejected")


def test_a_worse_candidate_is_registered_but_the_champion_stays(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir)
    champion = retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True)

    worse = retrain_flow(
        str(spec_path),
        as_of=AS_OF,
        auto_approve=True,
        overrides={"lightgbm.num_boost_round": 1},
    )

    registry, ledger, spec = registry_for(spec_path)
    assert not worse["gate_passed"] and not worse["promoted"]
    assert "worse than the champion" in worse["decision"]
    assert registry.aliases() == {"champion": champion["version"], "challenger": worse["version"]}
    assert registry.version(worse["version"]).tags["retrain.gate"] == "failed"
    assert ledger.runs(spec.name)[0].status == "rejected"


def _wait_for_paused_run(timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))
                )
            )
            if runs:
                return runs[0]
            time.sleep(0.5)
    raise AssertionError("no flow run paused for approval")


def _run_in_thread(spec_path: Path, as_of: str = AS_OF) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["outcome"] = retrain_flow(str(spec_path), as_of=as_of, actor="ci")
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.parametrize(
    ("decision", "promoted", "approval"),
    [("approve", True, "approved"), ("reject", False, "rejected")],
)
def test_promotion_waits_for_the_operator_typed_answer(
    tmp_path, bike_dir, decision, promoted, approval
):
    spec_path = write_spec(tmp_path, bike_dir, **{"gate.require_approval": True})
    thread, box = _run_in_thread(spec_path)

    paused = _wait_for_paused_run()
    registry, ledger, spec = registry_for(spec_path)
    assert registry.alias_version("champion") is None  # nothing moves while waiting
    assert registry.alias_version("challenger") == "1"
    resume_flow_run(
        paused.id, run_input={"decision": decision, "approver": "ana", "comment": "checked plot"}
    )
    thread.join(timeout=120)

    assert "error" not in box, box.get("error")
    assert box["outcome"]["promoted"] is promoted
    assert registry.alias_version("champion") == ("1" if promoted else None)
    tags = registry.version("1").tags
    assert (tags["retrain.approval"], tags["retrain.approver"]) == (approval, "ana")
    assert tags["retrain.approval_comment"] == "checked plot"
    [run] = ledger.runs(spec.name)
    assert run.actor == "ana"
    assert run.status == ("promoted" if promoted else "rejected")


def test_no_answer_before_the_approval_timeout_means_reject(tmp_path, bike_dir):
    spec_path = write_spec(
        tmp_path, bike_dir, **{"gate.require_approval": True, "gate.approval_timeout": "3s"}
    )

    outcome = retrain_flow(str(spec_path), as_of=AS_OF)

    registry, _, _ = registry_for(spec_path)
    assert not outcome["promoted"]
    assert "rejected by timeout" in outcome["decision"]
    assert registry.alias_version("champion") is None


def test_bad_input_fails_the_run_records_why_and_changes_nothing(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir, label="rentals")

    with pytest.raises(SchemaError, match="'rentals' \\(label\\) missing from the source"):
        retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True)

    registry, ledger, spec = registry_for(spec_path)
    [run] = ledger.runs(spec.name)
    assert run.status == "failed"
    assert "rentals" in (run.error or "")
    assert registry.versions() == []


def test_a_second_retrain_while_one_holds_the_model_is_skipped_with_the_reason(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir)
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    ledger.migrate()
    running = ledger.start_run(spec.name, "continual", "earlier trigger")
    assert ledger.claim_model(spec.name, running, pd.Timedelta(hours=1)) is None

    outcome = retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True)

    assert outcome["status"] == "skipped"
    assert f"another retrain of bike-test is running (ledger run {running})" in outcome["decision"]
    assert [r.status for r in ledger.runs(spec.name)] == ["skipped", "running"]
    registry, _, _ = registry_for(spec_path)
    assert registry.versions() == []


def test_the_flow_refuses_an_unknown_mode_at_its_boundary(tmp_path, bike_dir):
    from prefect.exceptions import ParameterTypeError

    spec_path = write_spec(tmp_path, bike_dir)

    with pytest.raises(ParameterTypeError, match=r"mode.*'manual', 'scheduled', 'stateful'"):
        retrain_flow(str(spec_path), mode="hourly")
    assert not (load_spec(spec_path).state.dir / "ledger.db").exists()  # refused before any work


def test_an_approval_from_a_name_outside_gate_approvers_is_not_counted(tmp_path, bike_dir):
    from flows.retrain_flow import ApprovalInput, _approval
    from retrain.config import parse_spec
    from tests.conftest import spec_dict

    spec = parse_spec(spec_dict(bike_dir, tmp_path / "state", **{"gate.approvers": ["ana"]}))

    bob = _approval(ApprovalInput(decision="approve", approver="bob", comment="lgtm"), spec)
    ana = _approval(ApprovalInput(decision="approve", approver="ana", comment="lgtm"), spec)

    assert (bob.approved, bob.approver, bob.comment) == (
        False,
        "bob",
        "'bob' is not in gate.approvers: not counted",
    )
    assert (ana.approved, ana.approver, ana.comment) == (True, "ana", "lgtm")
