"""Two retrain requests for one model at the same moment, from two processes, on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from registry import ModelRegistry
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import postgres_schema, spec_dict
from tests.flows.conftest import PrefectServer

RETRAIN = Path(sys.executable).with_name("retrain")


@pytest.mark.slow
@pytest.mark.postgres
def test_two_requests_at_the_same_moment_run_one_retrain_and_record_the_other_as_skipped(
    tmp_path, bike_dir, postgres_url, live_server: PrefectServer
):
    with postgres_schema(postgres_url, "test_concurrent") as ledger_url:
        # the run that gets the model waits for its operator (at most 60 s) holding the claim,
        # so the other request meets the claim whichever process starts first
        spec = spec_dict(
            bike_dir,
            tmp_path / "state",
            **{
                "gate.require_approval": True,
                "gate.approval_timeout": "60s",
                "state.ledger_url": ledger_url,
            },
        )
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        command = [str(RETRAIN), "run", "manual", "--spec", str(spec_path), "--as-of", "2011-04-29"]
        processes = [
            subprocess.Popen(
                [*command, "--actor", f"request-{i}"],
                cwd=tmp_path,
                env=live_server.env(),  # one Prefect server, as in production
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(2)
        ]
        try:
            outputs = [p.communicate(timeout=600)[0] for p in processes]
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()

        # one run waits for an approval nobody gives (timed out: 5, refused), the other is
        # skipped because the first holds the model (6): docs/cli.md
        assert sorted(p.returncode for p in processes) == [5, 6], "\n".join(outputs)
        loaded = load_spec(spec_path)
        ledger = Ledger(ledger_url)
        runs = {r.status: r for r in ledger.runs(loaded.name)}
        assert sorted(runs) == ["rejected", "skipped"], [r.status for r in ledger.runs()]
        ran, skipped = runs["rejected"], runs["skipped"]
        assert skipped.error == f"another retrain of bike-test is running (ledger run {ran.id})"
        assert ran.error is not None and "60s" in ran.error  # nobody answered: timed out
        [said] = [out for out in outputs if "manual retrain skipped" in out]
        assert f"ledger run {ran.id}" in said
        registry = ModelRegistry(loaded.state.tracking, loaded.name, ledger)
        assert [v.version for v in registry.versions()] == ["1"]  # exactly one retrain ran
        assert "champion" not in registry.aliases()
        ledger.dispose()
