"""No credential ever leaves the environment: logs, MLflow, Prefect and the ledger are scanned.

A retrain runs with a ledger URL and a SQL source URL that carry passwords, and a token in the
environment; then every place a retrain writes to is searched for the secrets: the Python log
records (retrain, registry, prefect, mlflow, sqlalchemy ...), the flow run's logs, parameters
and artifacts on the Prefect server, every file of the state directory (the MLflow database
with the run's params, tags and description and the version's tags, the artifacts, the
feature cache) and every row of the ledger.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from flows.retrain_flow import retrain_flow
from retrain.errors import DataError
from retrain.ledger import Ledger, metadata, retrain_runs
from tests.conftest import spec_dict

LEDGER_PASSWORD = "ledgerPw-7f3a9c"
SOURCE_PASSWORD = "sourcePw-91c2e4"
TOKEN = "tok-5e8b1d77"
SECRETS = (LEDGER_PASSWORD, SOURCE_PASSWORD, TOKEN)
AS_OF = "2011-04-29"


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema of the test PostgreSQL; the URL (without password) whose path points there."""
    schema = f"test_cred_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def with_password(postgres_url: str, password: str, schema: str) -> str:
    url = sa.make_url(postgres_url).set(password=password)
    url = url.update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def state_files_with_secrets(state: Path) -> dict[str, list[str]]:
    found = {}
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [s for s in SECRETS if s.encode() in data]
            if hits:
                found[str(path)] = hits
    return found


def ledger_rows_with_secrets(url: str) -> list[str]:
    engine = sa.create_engine(url)
    found = []
    try:
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    if leaks(repr(tuple(row))):
                        found.append(f"{table.name}: {tuple(row)}")
    finally:
        engine.dispose()
    return found


def prefect_texts(flow_run_ids: list[str]) -> list[str]:
    APILogHandler().flush()  # send the queued log records to the server first
    texts: list[str] = []
    with get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
            texts.append(repr(run.parameters))
            texts.append(repr(run.state))
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
            texts.extend(log.message for log in logs)
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            texts.extend(f"{a.key} {a.description} {a.data}" for a in artifacts)
    return texts


@pytest.mark.postgres
def test_no_password_or_token_reaches_logs_mlflow_prefect_artifacts_or_the_ledger(
    tmp_path, bike_dir, postgres_url, pg_schema, monkeypatch, caplog, project_logs
):
    source_url = with_password(postgres_url, SOURCE_PASSWORD, pg_schema)
    ledger_url = with_password(postgres_url, LEDGER_PASSWORD, pg_schema)
    rows = pd.concat([pd.read_csv(p) for p in sorted(bike_dir.glob("*.csv"))], ignore_index=True)
    engine = sa.create_engine(source_url)
    rows.to_sql("bike_hours", engine, index=False)
    engine.dispose()
    state = tmp_path / "state"
    spec = spec_dict(bike_dir, state, **{"name": "bike-cred"})
    spec["source"] = {"kind": "sql", "url": source_url, "table": "bike_hours"}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({**spec, "source": {**spec["source"], "table": "nope"}}))
    monkeypatch.setenv("RETRAIN_LEDGER_URL", ledger_url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    monkeypatch.setenv("RETRAIN_API_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)

    outcome = retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True, actor="ci")
    with pytest.raises(DataError, match=r"table 'nope' does not exist in postgresql\+psycopg://"):
        retrain_flow(str(broken), as_of=AS_OF, auto_approve=True, actor="ci")

    assert outcome["promoted"]
    assert {r.name.split(".")[0] for r in caplog.records} >= {"retrain", "registry"}  # it listened
    assert [r.getMessage() for r in caplog.records if leaks(r.getMessage())] == []
    assert leaks(caplog.text) == []
    assert state_files_with_secrets(state) == {}
    assert ledger_rows_with_secrets(ledger_url) == []
    runs = Ledger(ledger_url).runs("bike-cred")
    assert [r.status for r in runs] == ["failed", "promoted"]
    assert "postgres:***@127.0.0.1" in (runs[0].error or "")  # the URL, its password masked
    engine = sa.create_engine(ledger_url)
    with engine.connect() as conn:
        flow_runs = conn.execute(sa.select(retrain_runs.c.flow_run_id)).scalars().all()
    engine.dispose()
    assert len(flow_runs) == 2 and all(flow_runs)
    texts = prefect_texts(list(flow_runs))
    assert len(texts) > 10  # logs, parameters and artifacts of both runs were read
    assert [t for t in texts if leaks(t)] == []
