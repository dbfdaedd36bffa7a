"""A sweep: several models' retrains in one process (``retrain run ... --spec A --spec B``),
each its own retrain subflow run and ledger run, the per-model claim kept."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect import get_client
from typer.testing import CliRunner

from flows.cli import app, sweep_code
from flows.links import FLOW_RUN_ID_TAG
from flows.retrain_flow import make_registry
from flows.sweep_flow import sweep_flow
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import spec_dict
from tests.flows.conftest import artifacts_of

runner = CliRunner()


def write_spec(tmp_path: Path, bike_dir: Path, name: str, **overrides) -> Path:
    data = spec_dict(bike_dir, tmp_path / f"state-{name}", name=name, **overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def when_and_how(as_of: str) -> list[str]:
    return ["--as-of", as_of, "--auto-approve", "--json"]


def flat(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.slow
def test_a_sweep_retrains_each_model_in_one_process_and_skips_a_model_another_run_holds(
    tmp_path, bike_dir
):
    a, b = (write_spec(tmp_path, bike_dir, name) for name in ("sweep-a", "sweep-b"))

    first = runner.invoke(
        app,
        ["run", "manual", "--spec", str(a), "--spec", str(b), *when_and_how("2011-04-15")],
    )

    assert first.exit_code == 0, first.output
    outcomes = json.loads(first.stdout)
    assert [o["model"] for o in outcomes] == ["sweep-a", "sweep-b"]
    assert [o["status"] for o in outcomes] == ["promoted", "promoted"]
    # each model a subflow run of ONE sweep run
    with get_client(sync_client=True) as client:
        ids = [_flow_run_of(p, o["version"]) for p, o in zip((a, b), outcomes, strict=True)]
        runs = [client.read_flow_run(i) for i in ids]
        parents = {client.read_task_run(r.parent_task_run_id).flow_run_id for r in runs}
    assert len(parents) == 1

    # another run holds sweep-a: the sweep skips it and still retrains sweep-b
    spec_a = load_spec(a)
    with Ledger(spec_a.state.ledger) as ledger:
        holder = ledger.start_run("sweep-a", "stateful", "elsewhere", actor="other")
        assert ledger.claim_model("sweep-a", holder, stale_after=pd.Timedelta(hours=1)) is None
    second = runner.invoke(
        app,
        ["run", "stateful", "--spec", str(a), "--spec", str(b), *when_and_how("2011-04-19")],
    )

    increments = json.loads(second.stdout)
    assert increments[0]["status"] == "skipped", increments[0]
    assert f"ledger run {holder}" in increments[0]["decision"]
    assert increments[1]["model"] == "sweep-b"
    assert increments[1]["strategy"] == "warm"
    assert increments[1]["status"] in {"promoted", "rejected"}
    # reports.plots = "passed" (default): the plots only for a candidate that passed the gate
    for path, outcome in ((a, outcomes[0]), (b, outcomes[1]), (b, increments[1])):
        evidence = _evidence(path, outcome["version"])
        assert {"backtest.csv", "backtest_windows.csv", "feature_importance.csv"} <= evidence
        drawn = {"backtest.png", "feature_importance.png"} <= evidence
        assert drawn is outcome["gate_passed"], (outcome["decision"], evidence)
    assert second.exit_code == int(sweep_code(increments))


def _evidence(spec_path: Path, version: str) -> set[str]:
    spec = load_spec(spec_path)
    with Ledger(spec.state.ledger) as ledger:
        registry = make_registry(spec, ledger)
        run_id = registry.version(version).run_id
        files = registry.client.list_artifacts(run_id, "evidence")
    return {Path(f.path).name for f in files}


def _flow_run_of(spec_path: Path, version: str) -> str:
    spec = load_spec(spec_path)
    with Ledger(spec.state.ledger) as ledger:
        return make_registry(spec, ledger).version(version).tags[FLOW_RUN_ID_TAG]


@pytest.mark.slow
def test_a_model_that_fails_does_not_stop_the_sweep(tmp_path, bike_dir):
    good = write_spec(tmp_path, bike_dir, "sweep-good")
    missing = tmp_path / "no-such-spec.toml"

    outcomes = sweep_flow(
        spec_paths=[str(missing), str(good)], mode="manual", as_of="2011-04-15", auto_approve=True
    )

    assert outcomes[0]["status"] == "failed"
    assert outcomes[0]["spec_path"] == str(missing)
    assert "no-such-spec.toml" in outcomes[0]["error"]
    assert outcomes[1]["status"] == "promoted"
    assert sweep_code(outcomes) == 1
    # the model's subflow run is named and tagged as a run of its own is, and shows its
    # verdict (with the link to the version) and its model card
    run_id = _flow_run_of(good, outcomes[1]["version"])
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    assert run.name == "sweep-good-manual-2011-04-15"
    assert {"model:sweep-good", "mode:manual", "family:lightgbm"} <= set(run.tags)
    [verdict] = artifacts_of(run.id, "sweep-good-backtest")
    assert f"models:/sweep-good/{outcomes[1]['version']}" in verdict.data
    [card] = artifacts_of(run.id, "sweep-good-model-card")
    assert card.data.startswith(f"# Model card: sweep-good version {outcomes[1]['version']}")
    # its task runs are the steps that ingest, train, register and decide; loading the
    # champion, the backtest and the card are steps of the flow run itself (a task run costs
    # the server three events and a log line)
    assert _task_names(run.id, until={"apply_decision"}) == {
        "prepare_data",
        "train_candidate",
        "register_candidate",
        "apply_decision",
    }


def _task_names(flow_run_id, until: set[str], timeout: float = 60) -> set[str]:
    """The names of a flow run's task runs, once those in ``until`` are recorded and
    completed (the server records task runs from their events, a moment after they ran), and
    two seconds more for any later one."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def names() -> dict[str, str]:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        return {r.name.rsplit("-", 1)[0]: r.state_type.value if r.state_type else "" for r in runs}

    deadline = time.monotonic() + timeout
    while any(names().get(name) != "COMPLETED" for name in until):
        assert time.monotonic() < deadline, names()
        time.sleep(0.5)
    time.sleep(2)
    return set(names())


def test_a_sweep_that_names_a_model_twice_is_refused_before_any_work(tmp_path, bike_dir):
    a = write_spec(tmp_path, bike_dir, "twice")
    copy = tmp_path / "copy.yaml"
    copy.write_text(a.read_text())

    result = runner.invoke(
        app, ["run", "stateful", "--spec", str(a), "--spec", str(copy), "--auto-approve"]
    )

    assert result.exit_code == 2, result.output
    assert "names model 'twice' twice" in flat(result)
    assert not (tmp_path / "state-twice").exists()  # nothing ran, nothing was created


def test_a_sweep_does_not_wait_for_an_operator(tmp_path, bike_dir):
    a = write_spec(tmp_path, bike_dir, "quiet")
    b = write_spec(tmp_path, bike_dir, "asks", **{"gate.require_approval": True})

    result = runner.invoke(app, ["run", "stateful", "--spec", str(a), "--spec", str(b)])

    assert result.exit_code == 2, result.output
    assert "asks" in flat(result) and "--auto-approve" in flat(result)
    assert not (tmp_path / "state-quiet").exists()


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        (["promoted", "rejected"], 5),
        (["promoted", "skipped"], 0),
        (["skipped", "skipped"], 6),
        (["failed", "promoted"], 1),
        (["live", "promoted"], 0),
    ],
)
def test_the_exit_code_of_a_sweep(statuses, code):
    outcomes = [
        {"status": s, "promoted": s == "promoted"} if s != "failed" else {"status": s}
        for s in statuses
    ]
    assert int(sweep_code(outcomes)) == code


def test_the_sweep_deployment_is_registered_on_the_work_pool(tmp_path):
    from flows.deployments import deploy_sweep

    name = deploy_sweep("sweep-pool", working_dir=tmp_path)

    assert name == "retrain-sweep/sweep"
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        pool = client.read_work_pool("sweep-pool")
    assert deployment.work_pool_name == "sweep-pool" and pool.type == "process"
    assert deployment.entrypoint == "flows.sweep_flow.sweep_flow"  # a worker imports it
    assert deployment.job_variables["working_dir"] == str(tmp_path.resolve())
