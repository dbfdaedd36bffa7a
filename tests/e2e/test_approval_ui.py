"""An operator answers a paused retrain in the real Prefect UI, in headless Chromium.

The retrain runs as the ``retrain`` CLI in a subprocess against a real ``prefect server``; the
only way the answer reaches the flow is the run page's Resume dialog, filled in the browser.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.retrain_flow import make_registry
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import als_spec_dict, spec_dict
from tests.e2e.conftest import BIN, PrefectServer, log_tail, stop_process_group

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    # before the server starts: no chromium means skip (locally) or fail (CI) right away
    pytest.mark.usefixtures("chromium_executable"),
]

AS_OF = "2011-04-29"
PAUSE_TIMEOUT = 120.0  # ingest + features + train + backtest + register, then pause
# the flow polls for the answer every 10 s (pause_flow_run's poll_interval), then promotes
FINISH_TIMEOUT = 90.0


@dataclass
class RetrainRun:
    proc: subprocess.Popen[Any]
    log: Path

    def wait_ok(self, timeout: float, expected: int = 0) -> None:
        """Wait for the exit code: 0 promoted, 5 not promoted (docs/cli.md)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"retrain still running after {timeout:.0f}s:\n{log_tail(self.log)}")
        assert code == expected, f"retrain exited with {code}:\n{log_tail(self.log)}"


@pytest.fixture
def start_retrain(
    prefect_server: PrefectServer, tmp_path: Path
) -> Iterator[Callable[..., RetrainRun]]:
    """``retrain run manual`` in a subprocess against the server; killed at teardown."""
    started: list[RetrainRun] = []

    def start(spec_path: Path, *extra: str, as_of: str = AS_OF) -> RetrainRun:
        log = tmp_path / f"retrain-{len(started) + 1}.log"
        cmd = [str(BIN / "retrain"), "run", "manual", "--spec", str(spec_path)]
        cmd += ["--as-of", as_of, "--actor", "ci-e2e", *extra]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                env=prefect_server.client_env(tmp_path / "client-prefect-home"),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        run = RetrainRun(proc, log)
        started.append(run)
        return run

    yield start
    for run in started:
        stop_process_group(run.proc)


def write_spec(tmp_path: Path, bike_dir: Path) -> Path:
    path = tmp_path / "spec.yaml"
    data = spec_dict(bike_dir, tmp_path / "state", **{"gate.require_approval": True})
    path.write_text(yaml.safe_dump(data))
    return path


def wait_for_paused_run(server: PrefectServer, spec_path: Path, run: RetrainRun) -> FlowRun:
    """The flow run of ``spec_path`` once it is Paused (waiting for the operator)."""
    deadline = time.monotonic() + PAUSE_TIMEOUT
    paused = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"])))
    with (
        temporary_settings(updates={PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        while time.monotonic() < deadline:
            for flow_run in client.read_flow_runs(flow_run_filter=paused):
                if flow_run.parameters.get("spec_path") == str(spec_path):
                    return flow_run
            if run.proc.poll() is not None:
                pytest.fail(
                    f"retrain exited ({run.proc.returncode}) without pausing:\n{log_tail(run.log)}"
                )
            time.sleep(0.5)
    pytest.fail(f"no paused run within {PAUSE_TIMEOUT:.0f}s:\n{log_tail(run.log)}")


def form_field(dialog: Locator, label: str) -> Locator:
    """One property of the RunInput form, by its label ("Decision (Optional)" etc.)."""
    # `has` is matched inside each property, so it is built from the page, not the dialog
    label_text = dialog.page.locator(
        ".schema-form-property__label", has_text=re.compile(rf"^{label}\b")
    )
    return dialog.locator(".schema-form-property").filter(has=label_text)


def answer_in_ui(
    page: Page,
    server: PrefectServer,
    flow_run: FlowRun,
    *,
    version: str,
    decision: str,
    model: str = "bike-test",
    approver: str,
    comment: str,
    screenshots: Path,
) -> None:
    """Open the paused run, click Resume, fill the ApprovalInput form, Submit."""
    from playwright.sync_api import expect

    try:
        page.goto(f"{server.url}/runs/flow-run/{flow_run.id}")
        page.get_by_role("button", name="Resume", exact=True).click()
        dialog = page.get_by_role("dialog").filter(has_text="Resume Flow Run")
        expect(dialog).to_be_visible()
        # the operator sees what is asked and the backtest evidence before answering
        expect(dialog).to_contain_text(f"Promote {model} version {version} to champion?")
        expect(dialog).to_contain_text("Backtest PASSED")

        # Literal["approve", "reject"] renders as a select; a mouse click on it opens the
        # options popover and closes it again in the same frame (prefect 3.8.8's UI), the
        # keyboard opens it for good
        select = form_field(dialog, "Decision").locator(".p-select-button__control")
        select.focus()
        select.press("ArrowDown")
        options = page.get_by_role("listbox")
        expect(options).to_be_visible()
        options.get_by_role("option", name=decision, exact=True).click()
        expect(select).to_have_text(decision)
        form_field(dialog, "Approver").locator("textarea").fill(approver)
        form_field(dialog, "Comment").locator("textarea").fill(comment)
        page.screenshot(path=screenshots / f"resume-dialog-{decision}.png")

        dialog.get_by_role("button", name="Submit", exact=True).click()
        expect(dialog).to_be_hidden()
    except Exception:
        page.screenshot(path=screenshots / "failure.png")
        (screenshots / "failure.html").write_text(page.content())
        raise


def wait_until_not_paused(server: PrefectServer, flow_run: FlowRun) -> str:
    """The run's state name once the server has taken the answer (bounded)."""
    deadline = time.monotonic() + 30.0
    with (
        temporary_settings(updates={PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run.id).state
            if state is not None and state.name != "Paused":
                return state.name
            time.sleep(0.25)
    pytest.fail("the run is still Paused after Submit in the UI")


def registry_for(spec_path: Path):
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    return make_registry(spec, ledger), ledger, spec


def test_an_operator_approves_in_the_prefect_ui_and_the_candidate_becomes_champion(
    page, prefect_server, start_retrain, tmp_path, bike_dir
):
    spec_path = write_spec(tmp_path, bike_dir)
    run = start_retrain(spec_path)
    flow_run = wait_for_paused_run(prefect_server, spec_path, run)
    registry, ledger, spec = registry_for(spec_path)
    assert registry.alias_version("champion") is None  # nothing moves while it waits

    answer_in_ui(
        page,
        prefect_server,
        flow_run,
        version="1",
        decision="approve",
        approver="Ana Operator",
        comment="backtest plot checked in the UI",
        screenshots=tmp_path,
    )

    wait_until_not_paused(prefect_server, flow_run)
    run.wait_ok(FINISH_TIMEOUT)
    assert registry.alias_version("champion") == "1"
    tags = registry.version("1").tags
    assert tags["retrain.approval"] == "approved"
    assert tags["retrain.approval_automatic"] == "false"
    assert tags["retrain.approver"] == "Ana Operator"
    assert tags["retrain.approval_comment"] == "backtest plot checked in the UI"
    [promotion] = [row for row in ledger.alias_history(spec.name) if row["alias"] == "champion"]
    assert (promotion["from_version"], promotion["to_version"]) == (None, "1")
    assert promotion["actor"] == "Ana Operator"
    assert promotion["flow_run_id"] == str(flow_run.id)
    [ledger_run] = ledger.runs(spec.name)
    assert (ledger_run.status, ledger_run.actor) == ("promoted", "Ana Operator")


def test_an_operator_rejects_in_the_prefect_ui_and_the_champion_stays(
    page, prefect_server, start_retrain, tmp_path, bike_dir
):
    spec_path = write_spec(tmp_path, bike_dir)
    start_retrain(spec_path, "--auto-approve").wait_ok(PAUSE_TIMEOUT)
    registry, ledger, spec = registry_for(spec_path)
    assert registry.alias_version("champion") == "1"
    run = start_retrain(spec_path, "--force")  # the champion's own data: same model unless forced
    flow_run = wait_for_paused_run(prefect_server, spec_path, run)
    assert registry.alias_version("challenger") == "2"

    answer_in_ui(
        page,
        prefect_server,
        flow_run,
        version="2",
        decision="reject",
        approver="Bo Reviewer",
        comment="no better than the champion",
        screenshots=tmp_path,
    )

    wait_until_not_paused(prefect_server, flow_run)
    run.wait_ok(FINISH_TIMEOUT, expected=5)  # rejected: not promoted
    assert registry.alias_version("champion") == "1"
    tags = registry.version("2").tags
    assert tags["retrain.approval"] == "rejected"
    assert tags["retrain.approver"] == "Bo Reviewer"
    assert tags["retrain.approval_comment"] == "no better than the champion"
    champion_moves = [
        (row["to_version"], row["actor"])
        for row in ledger.alias_history(spec.name)
        if row["alias"] == "champion"
    ]
    assert champion_moves == [("1", "ci-e2e")]
    latest = ledger.runs(spec.name)[0]
    assert (latest.model_version, latest.status, latest.actor) == ("2", "rejected", "Bo Reviewer")


def test_an_operator_approves_an_als_recommender_in_the_prefect_ui(
    page, prefect_server, start_retrain, tmp_path, taste_csv
):
    """The same form, gate evidence and audit for the second model family."""
    spec_path = tmp_path / "als.yaml"
    data = als_spec_dict(taste_csv.parent, tmp_path / "state", **{"gate.require_approval": True})
    spec_path.write_text(yaml.safe_dump(data))
    run = start_retrain(spec_path, as_of="2024-01-25")
    flow_run = wait_for_paused_run(prefect_server, spec_path, run)
    registry, ledger, spec = registry_for(spec_path)
    assert registry.alias_version("champion") is None

    answer_in_ui(
        page,
        prefect_server,
        flow_run,
        version="1",
        decision="approve",
        approver="Ana Operator",
        comment="ndcg per window checked",
        model="taste-als",
        screenshots=tmp_path,
    )

    wait_until_not_paused(prefect_server, flow_run)
    run.wait_ok(FINISH_TIMEOUT)
    assert registry.alias_version("champion") == "1"
    tags = registry.version("1").tags
    assert (tags["retrain.approval"], tags["retrain.approver"]) == ("approved", "Ana Operator")
    assert tags["retrain.family"] == "als"
    [promotion] = [row for row in ledger.alias_history(spec.name) if row["alias"] == "champion"]
    assert (promotion["to_version"], promotion["actor"]) == ("1", "Ana Operator")
    assert promotion["flow_run_id"] == str(flow_run.id)
