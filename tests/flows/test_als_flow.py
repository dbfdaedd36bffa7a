"""The implicit-ALS family through the same flows as LightGBM: manual, stateful, scheduled and
continual runs, with real implicit, real MLflow (SQLite) and a real Prefect server."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import pandas as pd
import pytest
import yaml
from PIL import Image
from prefect.flow_runs import resume_flow_run
from typer.testing import CliRunner

from flows.cli import app
from flows.monitor_flow import monitor_flow
from flows.retrain_flow import make_registry, retrain_flow
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import als_spec_dict
from tests.flows.conftest import artifacts_of, run_flow
from tests.flows.test_retrain_flow import _run_in_thread, _wait_for_paused_run

runner = CliRunner()


def write_spec(tmp_path: Path, source: Path, **overrides) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(als_spec_dict(source, tmp_path / "state", **overrides)))
    return path


def registry_of(spec_path: Path):
    spec = load_spec(spec_path)
    return spec, make_registry(spec, Ledger(spec.state.ledger))


def flat(result) -> str:
    return " ".join(result.output.split())


def test_manual_run_registers_a_pyfunc_that_recommends_with_a_stated_fallback(tmp_path, taste_csv):
    spec_path = write_spec(tmp_path, taste_csv)

    outcome, flow_run_id = run_flow(
        retrain_flow, str(spec_path), mode="manual", as_of="2024-01-25", auto_approve=True
    )

    assert outcome["strategy"] == "scratch"
    assert outcome["metric"] == "ndcg"
    assert outcome["candidate"] > outcome["baseline"]
    assert outcome["promoted"], outcome["decision"]
    spec, registry = registry_of(spec_path)
    tags = registry.version("1").tags
    assert tags["retrain.family"] == "als"
    assert tags["retrain.gate"] == "passed"
    assert float(tags["retrain.backtest.ndcg.baseline"]) == pytest.approx(outcome["baseline"])
    assert tags["retrain.window_end"] == "2024-01-21 00:00:00"  # the holdout is the last 4 days
    uri = registry.client.get_model_version_download_uri(
        spec.name, registry.alias_version("champion")
    )
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(tmp_path / "served"), tracking_uri=registry.tracking_uri
    )
    model = mlflow.pyfunc.load_model(local)
    recs = model.predict(pd.DataFrame({"user": [4, "5", "no-such-user"]}), params={"k": 5})
    assert list(recs.columns) == ["user", "rank", "item", "score", "source"]
    by_user = {user: frame for user, frame in recs.groupby("user")}
    assert set(by_user["no-such-user"]["source"]) == {"popularity"}
    assert set(by_user["4"]["source"]) == {"als"}
    assert len(by_user["4"]) == len(by_user["5"]) == 5
    # the planted structure: user u likes the items of taste u % 3 (ids 100 + 20 * (u % 3) ...)
    users = [str(u) for u in range(90)]
    best = model.predict(pd.DataFrame({"user": users}), params={"k": 1})
    taste = 100 + 20 * (best["user"].astype(int) % 3)
    in_taste = best["item"].astype(int).between(taste, taste + 19)
    # (popularity would put about a third there; a user who rated most of a taste gets others)
    assert in_taste.mean() >= 0.75, best[~in_taste]
    model_default = model.predict(pd.DataFrame({"user": ["4"]}))
    assert len(model_default) == spec.als.k
    evidence = {
        f.path for f in registry.client.list_artifacts(registry.version("1").run_id, "evidence")
    }
    assert {"evidence/ranking_segments.csv", "evidence/backtest.md"} <= evidence
    [segments] = artifacts_of(flow_run_id, "taste-als-ranking-segments")
    assert {row["segment"] for row in json.loads(segments.data)} == {
        "all",
        "warm",
        "cold",
    }
    assert len(by_user["no-such-user"]) == 5


def test_an_als_version_logs_the_per_window_backtest_plot_and_table_with_champion_and_popularity(
    tmp_path, taste_csv
):
    # the second candidate is refused by the gate here: plots drawn for every candidate
    spec_path = write_spec(
        tmp_path, taste_csv, **{"gate.backtest_windows": 2, "reports.plots": "always"}
    )
    retrain_flow(str(spec_path), mode="manual", as_of="2024-01-25", auto_approve=True)

    second, flow_run_id = run_flow(
        retrain_flow, str(spec_path), mode="manual", as_of="2024-01-29", auto_approve=True
    )

    _, registry = registry_of(spec_path)
    assert second["champion"] is not None  # scored beside the champion (v1) and popularity
    run_id = registry.version(second["version"]).run_id
    evidence = {f.path: f for f in registry.client.list_artifacts(run_id, "evidence")}
    for name in ("backtest.png", "backtest_windows.csv", "backtest.csv"):
        assert f"evidence/{name}" in evidence, sorted(evidence)
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path="evidence",
            dst_path=str(tmp_path / "evidence"),
            tracking_uri=registry.tracking_uri,
        )
    )
    with Image.open(local / "backtest.png") as plot:
        assert plot.format == "PNG"
        assert plot.size == (1100, 462)  # window panel + overall bars, 10 x 4.2 in at 110 dpi
    windows = pd.read_csv(local / "backtest_windows.csv")
    assert list(windows.columns) == [
        "window",
        "rows",
        "candidate",
        "champion",
        "baseline",
        "improvement",
    ]
    assert len(windows) == 2
    assert windows[["candidate", "champion", "baseline"]].notna().all().all()
    assert windows["window"].tolist() == [
        "2024-01-25 00:00 .. 2024-01-27 00:00",
        "2024-01-27 00:00 .. 2024-01-29 00:00",
    ]
    # the Prefect run shows the same per-window table
    [shown] = artifacts_of(flow_run_id, "taste-als-backtest-windows")
    rows = json.loads(shown.data)
    assert [row["window"] for row in rows] == windows["window"].tolist()
    assert [float(row["champion"]) for row in rows] == pytest.approx(
        windows["champion"].tolist(), abs=1e-4
    )


@pytest.mark.parametrize(
    ("decision", "champion", "approval"),
    [("approve", "2", "approved"), ("reject", "1", "rejected")],
)
def test_an_als_promotion_waits_for_the_operator_typed_answer_through_the_prefect_api(
    tmp_path, taste_csv, decision, champion, approval
):
    spec_path = write_spec(tmp_path, taste_csv, **{"gate.require_approval": True})
    # a weak champion (2 factors, 1 iteration), auto-approved, for the candidate to beat
    weak = {"als.factors": 2, "als.iterations": 1}
    first = retrain_flow(
        str(spec_path), as_of="2024-01-25", auto_approve=True, overrides=weak, actor="ci"
    )
    assert first["promoted"], first["decision"]
    thread, box = _run_in_thread(spec_path, as_of="2024-01-25")

    paused = _wait_for_paused_run()
    spec, registry = registry_of(spec_path)
    assert registry.aliases() == {"champion": "1", "challenger": "2"}  # nothing moves yet
    resume_flow_run(
        paused.id,
        run_input={"decision": decision, "approver": "ana", "comment": "checked the ndcg plot"},
    )
    thread.join(timeout=120)

    assert "error" not in box, box.get("error")
    outcome = box["outcome"]
    assert outcome["gate_passed"] and outcome["champion"] is not None
    assert outcome["promoted"] is (decision == "approve")
    assert registry.alias_version("champion") == champion
    tags = registry.version("2").tags
    assert (tags["retrain.approval"], tags["retrain.approver"]) == (approval, "ana")
    assert tags["retrain.approval_comment"] == "checked the ndcg plot"
    ledger = Ledger(spec.state.ledger)
    run = ledger.run_of_flow_run(str(paused.id))
    assert run is not None and run.model_version == "2"
    assert (run.actor, run.status) == ("ana", "promoted" if decision == "approve" else "rejected")
    moves = [
        (row["alias"], row["from_version"], row["to_version"], row["actor"])
        for row in ledger.alias_history(spec.name)
        if row["flow_run_id"] == str(paused.id)
    ]
    if decision == "approve":
        assert registry.alias_version("previous") == "1"
        assert moves == [
            ("challenger", None, "2", "ci"),  # registered by the run's actor
            ("champion", "1", "2", "ana"),
            ("previous", None, "1", "ana"),
            ("challenger", "2", None, "ana"),
        ]
        [audit] = [
            row
            for row in ledger.alias_history(spec.name)
            if row["flow_run_id"] == str(paused.id) and row["alias"] == "champion"
        ]
        assert audit["reason"] == "gate passed; approved by ana: checked the ndcg plot"
    else:
        assert registry.aliases() == {"champion": "1", "challenger": "2"}
        assert moves == [("challenger", None, "2", "ci")]  # set at registration, then no move
        assert "rejected by ana: checked the ndcg plot" in (run.error or "")


def test_stateful_runs_fold_in_the_new_partitions_then_recompute_every_n(tmp_path, taste_csv):
    spec_path = write_spec(tmp_path, taste_csv, **{"stateful.scratch_every": 2})
    days = ["2024-01-25", "2024-01-27", "2024-01-29", "2024-01-31"]

    outcomes = [
        retrain_flow(str(spec_path), mode="stateful", as_of=day, auto_approve=True) for day in days
    ]

    assert [o["strategy"] for o in outcomes] == ["scratch", "foldin", "foldin", "scratch"]
    assert all(o["promoted"] for o in outcomes[:3]), [o["decision"] for o in outcomes]
    spec, registry = registry_of(spec_path)
    chain = registry.lineage("3")
    assert [v.version for v in chain] == ["3", "2", "1"]
    assert [v.tags["retrain.increments"] for v in chain] == ["2", "1", "0"]
    for child, parent in itertools.pairwise(chain):
        # a fold-in's model covers the whole history of its lineage, up to its own holdout...
        assert child.tags["retrain.window_start"] == parent.tags["retrain.window_start"]
        assert child.tags["retrain.window_end"] > parent.tags["retrain.window_end"]
    # ... but it read only the partitions after its parent's training end: the recompute's
    # data version, then one version per increment
    data_versions = chain[0].tags["retrain.data_versions"].split(",")
    assert data_versions[0] == chain[-1].tags["retrain.data_version"]
    assert len(data_versions) == 3
    assert not set(data_versions[1:]) & {v.tags["retrain.data_version"] for v in chain}
    assert int(chain[0].tags["retrain.rows"]) < int(chain[-1].tags["retrain.rows"])
    folded, parent = registry.load_model("3"), registry.load_model("2")
    assert folded.increments_ == 2
    # no row of the id maps changed meaning: the parent's maps are a prefix of the child's
    assert list(folded.user_index_[: parent.user_index_.size]) == list(parent.user_index_)
    assert list(folded.item_index_[: parent.item_index_.size]) == list(parent.item_index_)
    forced = registry.version("4").tags
    assert forced["retrain.parent_version"] == "none"
    assert "2 fold-ins since the last recompute" in forced["retrain.strategy_reason"]

    shown = runner.invoke(app, ["lineage", spec.name, "3", "--spec", str(spec_path)])
    assert shown.exit_code == 0, shown.output
    assert " -> ".join(data_versions) in flat(shown)


def test_scheduled_run_recomputes_and_skips_when_no_new_data_arrived(tmp_path, taste_csv):
    spec_path = write_spec(tmp_path, taste_csv)

    first = retrain_flow(str(spec_path), mode="scheduled", as_of="2024-01-25")
    again = retrain_flow(str(spec_path), mode="scheduled", as_of="2024-01-25")

    assert first["strategy"] == "scratch" and first["promoted"], first["decision"]
    assert again["status"] == "skipped"
    assert "no new data" in again["decision"]


def test_new_interactions_trigger_a_continual_fold_in(tmp_path, taste_csv):
    spec_path = write_spec(
        tmp_path,
        taste_csv,
        **{
            "monitor.any": ["volume"],
            "monitor.min_new_rows": 150,
            "monitor.max_age": "365D",
            "monitor.cooldown": "1h",
        },
    )
    retrain_flow(str(spec_path), mode="manual", as_of="2024-01-25", auto_approve=True)

    quiet = monitor_flow(str(spec_path), as_of="2024-01-22")
    busy = monitor_flow(str(spec_path), as_of="2024-01-29")

    assert quiet["retrain"] is False and quiet["fresh_rows"] < 150
    assert busy["retrain"] is True, busy["reasons"]
    assert busy["fired"] == ["volume"]
    assert busy["fresh_rows"] >= 150
    outcome = retrain_flow(
        str(spec_path),
        mode="continual",
        reason="; ".join(busy["reasons"]),
        as_of="2024-01-29",
        trigger_check=str(busy["check_id"]),
    )
    assert outcome["strategy"] == "foldin"
    _, registry = registry_of(spec_path)
    tags = registry.version(outcome["version"]).tags
    assert tags["retrain.trigger_check"] == str(busy["check_id"])
    assert "new rows" in tags["retrain.reason"]
