"""A sweep: many models' retrains in one flow run and one process, each a retrain subflow.

A fleet's nightly increments are small (LightGBM trains a day of rows in a fraction of a
second); what each costs is the process around it: starting Python, importing Prefect,
MLflow, LightGBM and pandas, building the MLflow stores. A run per model pays that every time.
A sweep pays it once for all its models: each model is a subflow run of the same
:func:`~flows.retrain_flow.retrain_flow` (its own flow run, tasks, ledger run and claim), run
one after the other in this process.

One retrain per model still holds: each subflow claims its model in the ledger, so a model
that another run (a sweep, a deployment's run, the CLI) is retraining is skipped, never run
twice at once; a sweep refuses a list that names one model twice, and a model that would wait
for an operator's approval (use ``auto_approve``). A model whose retrain fails does not stop
the sweep: its outcome says ``failed`` with the error, and the others run.

Heartbeats: the sweep's flow run sends Prefect's flow-run heartbeats for its process (a
crashed sweep is detected as any crashed run is); its subflow runs send none. Prefect's
heartbeat thread sleeps in one-second steps and each flow run waits for it to stop, up to a
second per model for a subflow that runs in the same process as its parent anyway. The claim
of a model whose retrain died with a crashed sweep is taken over by its next retrain (the
ledger sees the claim's process is dead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows.errors import SweepRefused
from flows.links import run_name
from flows.retrain_flow import retrain_flow
from flows.settings import resolve_spec
from retrain.errors import RetrainError
from retrain.statuses import Mode


def check_sweep(
    spec_paths: Sequence[str], auto_approve: bool, overrides: dict[str, Any] | None = None
) -> dict[str, str]:
    """Refuse, before any retrain, a sweep that names one model twice (its second retrain
    would find it claimed) or holds a model that would wait for an operator (the models
    after it would wait too). A spec that cannot be read is left to its own retrain, which
    fails with the reason. Returns the model name of each spec that could be read."""
    seen: dict[str, str] = {}
    names: dict[str, str] = {}
    for path in spec_paths:
        try:
            spec = resolve_spec(path, overrides)
        except RetrainError:
            continue
        names[str(path)] = spec.name
        if spec.name in seen:
            raise SweepRefused(
                f"the sweep names model {spec.name!r} twice ({seen[spec.name]} and {path}): "
                "one retrain per model at a time; give each model's spec once"
            )
        seen[spec.name] = str(path)
        if spec.gate.require_approval and not auto_approve:
            raise SweepRefused(
                f"{spec.name} ({path}) needs an operator's approval (gate.require_approval) and "
                "a sweep does not wait for one (the models after it would wait too): pass "
                "auto_approve (--auto-approve), set gate.require_approval = false, or retrain "
                "that model on its own"
            )
    return names


def _sweep_name() -> str:
    params: dict[str, Any] = flow_run.parameters
    return f"sweep-{params.get('mode', 'stateful')}-{len(params.get('spec_paths') or ())}-models"


@flow(name="retrain-sweep", log_prints=False, flow_run_name=_sweep_name)
def sweep_flow(
    spec_paths: list[str],
    mode: Mode = "stateful",
    reason: str = "sweep",
    as_of: str | None = None,
    auto_approve: bool = False,
    actor: str = "operator",
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Retrain every spec's model in turn (each a retrain subflow run); one outcome each, in
    order: the retrain flow's, or ``{"status": "failed", "spec_path", "error"}``."""
    names = check_sweep(spec_paths, auto_approve, overrides)
    logger = get_run_logger()
    outcomes: list[dict[str, Any]] = []
    label = None if as_of is None else str(as_of)

    def model_run_name() -> str:  # the retrain flow's run name, from the spec read above
        path = str(flow_run.parameters["spec_path"])
        return run_name(names.get(path, "retrain"), mode, label)

    # the sweep's parameters were validated as the sweep's run began (the same types as the
    # retrain flow's), and each spec was read once above: each subflow run skips Prefect's
    # validation of its parameters and a second read of its spec for its run name
    retrain = retrain_flow.with_options(flow_run_name=model_run_name, validate_parameters=False)
    # once for the whole sweep (building Prefect's settings takes a tenth of a second or more):
    # the sweep's own heartbeats were started with its run, before this
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for path in spec_paths:
            state = retrain(
                spec_path=str(path),
                mode=mode,
                reason=reason,
                as_of=as_of,
                auto_approve=auto_approve,
                actor=actor,
                overrides=overrides,
                return_state=True,
            )
            try:
                outcome = state.result()
            except Exception as exc:  # this model failed; the sweep goes on with the next
                logger.warning("retrain of %s failed: %s", path, exc)
                outcome = {"status": "failed", "spec_path": str(path), "error": str(exc)}
            outcomes.append(outcome)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
    logger.info(
        "sweep of %d models: %s",
        len(outcomes),
        ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
    )
    return outcomes
