"""Infra validation in the retrain flow: a candidate a real model server cannot serve is refused."""

from __future__ import annotations

import pytest

from flows.retrain_flow import retrain_flow
from flows.settings import model_env_cache
from registry import client
from tests.flows.conftest import run_flow
from tests.flows.test_retrain_flow import AS_OF, registry_for, write_spec


@pytest.mark.slow
def test_a_candidate_whose_requirements_miss_a_package_is_refused_and_the_champion_stays(
    tmp_path, bike_dir, monkeypatch
):
    spec_path = write_spec(tmp_path, bike_dir)
    first, _ = run_flow(retrain_flow, str(spec_path), as_of="2011-04-22", auto_approve=True)
    assert first["promoted"], first["decision"]
    # the next version declares requirements without lightgbm: it loads here, not on a server.
    # They are the ALS family's (no lightgbm among them), so the machine-wide environment
    # cache (the test run's) serves the environment built for an ALS model elsewhere.
    monkeypatch.setitem(client.SERVED_PACKAGES, "lightgbm", client.SERVED_PACKAGES["als"])
    assert "lightgbm" not in client.SERVED_PACKAGES["als"]

    outcome, _ = run_flow(
        retrain_flow,
        str(spec_path),
        as_of=AS_OF,
        auto_approve=True,
        # the backtest lets it through: only the infra validation can refuse it
        overrides={"gate.infra_validation": True, "gate.tolerance": 1.0},
    )

    registry, ledger, spec = registry_for(spec_path)
    assert not outcome["promoted"] and not outcome["gate_passed"]
    assert "infra validation failed" in outcome["decision"]
    assert "worse than the champion" not in outcome["decision"]
    assert "No module named 'lightgbm'" in outcome["decision"]
    assert registry.alias_version("champion") == first["version"]
    tags = registry.version(outcome["version"]).tags
    assert tags["retrain.gate"] == "failed"
    assert tags["retrain.infra_validation"] == "failed"
    assert float(tags["retrain.infra_validation.seconds"]) > 0
    run = ledger.run(outcome["run_id"])
    assert run.status == "rejected"
    assert run.error is not None and "infra validation failed" in run.error
    assert not run.metrics["passed"]
    # the environment is cached machine-wide (not under the state directory), keyed by the
    # requirements and the interpreter
    assert any(model_env_cache().glob("*/.ready"))
    assert not (spec.state.dir / "model-envs").exists()


def test_infra_validation_is_off_for_runs_outside_a_deployment_by_default(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir, **{"gate.infra_validation": "deployments"})
    cached = set(model_env_cache().glob("*"))

    outcome, _ = run_flow(retrain_flow, str(spec_path), as_of=AS_OF, auto_approve=True)

    registry, _, spec = registry_for(spec_path)
    assert outcome["promoted"]
    assert "retrain.infra_validation" not in registry.version(outcome["version"]).tags
    assert set(model_env_cache().glob("*")) == cached  # no environment built
    assert not (spec.state.dir / "model-envs").exists()
