"""Infra validation in the retrain flow: a candidate a real model server cannot serve is refused."""

from __future__ import annotations

import time

import pytest

from flows.retrain_flow import retrain_flow
from registry import client
from registry.infra import requirements_key
from tests.flows.conftest import run_flow
from tests.flows.test_retrain_flow import AS_OF, registry_for, write_spec


@pytest.mark.slow
def test_a_candidate_whose_requirements_miss_a_package_is_refused_and_the_champion_stays(
    tmp_path, bike_dir, monkeypatch, model_env_cache
):
    spec_path = write_spec(tmp_path, bike_dir)
    first, _ = run_flow(retrain_flow, str(spec_path), as_of="2011-04-22", auto_approve=True)
    assert first["promoted"], first["decision"]
    # the next version declares requirements without lightgbm: it loads here, not on a server.
    # They are the ALS family's (no lightgbm among them), so the run's environment cache can be
    # the session's: the environment built for an ALS model elsewhere in the suite is reused.
    monkeypatch.setitem(client.SERVED_PACKAGES, "lightgbm", client.SERVED_PACKAGES["als"])
    assert "lightgbm" not in client.SERVED_PACKAGES["als"]
    envs = tmp_path / "state" / "model-envs"
    envs.parent.mkdir(exist_ok=True)
    envs.symlink_to(model_env_cache, target_is_directory=True)
    started = time.time()

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
    # the environment is cached under the state directory, keyed by the requirements: this
    # run asked for it there (the key's lock file is opened, truncating it, at every request)
    key = requirements_key("\n".join(client.requirements("lightgbm")))
    assert (spec.state.dir / "model-envs" / key / ".ready").exists()
    assert (spec.state.dir / "model-envs" / f"{key}.lock").stat().st_mtime >= started


def test_infra_validation_is_off_for_runs_outside_a_deployment_by_default(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir, **{"gate.infra_validation": "deployments"})

    outcome, _ = run_flow(retrain_flow, str(spec_path), as_of=AS_OF, auto_approve=True)

    registry, _, spec = registry_for(spec_path)
    assert outcome["promoted"]
    assert "retrain.infra_validation" not in registry.version(outcome["version"]).tags
    assert not (spec.state.dir / "model-envs").exists()
