from __future__ import annotations

import sys

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from registry import DecisionFinal, ModelRegistry, PromotionRefused, RegistryError
from retrain.promotion import Approval, automatic_approval, decide
from tests.registry.conftest import FEATURES


def approved(version: str, who: str = "ana"):
    return decide(
        version=version,
        gate_passed=True,
        gate_reasons=("beats the champion",),
        approval=Approval(approved=True, approver=who, comment="ok"),
    )


def promote_new(registry: ModelRegistry, make_record) -> str:
    version = registry.register_candidate(make_record(), actor="test")
    decision = approved(version)
    registry.record_decision(decision)
    registry.promote(decision, actor="ana")
    return version


def test_register_creates_a_version_with_lineage_tags_and_the_challenger_alias(
    registry, make_record, ledger
):
    version = registry.register_candidate(make_record(), actor="tester", flow_run_id="fr-1")

    info = registry.version(version)
    assert version == "1"
    assert info.tags["retrain.data_version"] == "dv-test"
    assert info.tags["retrain.mode"] == "manual"
    assert registry.aliases() == {"challenger": "1"}
    audit = ledger.alias_history(registry.model_name)
    assert [(a["alias"], a["from_version"], a["to_version"], a["actor"]) for a in audit] == [
        ("challenger", None, "1", "tester")
    ]
    assert audit[0]["flow_run_id"] == "fr-1"


def test_the_run_holds_params_metrics_curve_description_and_evidence(
    registry, make_record, tracking_uri
):
    version = registry.register_candidate(make_record(), actor="tester")
    run_id = registry.version(version).run_id
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)

    assert run.data.params["learning_rate"] == "0.1"
    assert run.data.metrics["backtest_mae"] == 12.5
    assert run.data.tags["mlflow.note.content"] == "manual retrain: test"
    history = client.get_metric_history(run_id, "train_l2")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [3.0, 2.0, 1.5]
    evidence = {f.path for f in client.list_artifacts(run_id, "evidence")}
    assert "evidence/backtest.csv" in evidence
    assert run.info.status == "FINISHED"


def test_the_logged_model_scores_raw_frames_with_its_frozen_categories(
    registry, make_record, fitted, small_frame
):
    version = registry.register_candidate(make_record(), actor="tester")
    X = small_frame[FEATURES].assign(weathersit=small_frame["weathersit"].astype(str))

    loaded = registry.load_model(version)
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    pyfunc = mlflow.pyfunc.load_model(
        registry.client.get_model_version_download_uri(registry.model_name, version)
    )
    np.testing.assert_allclose(np.asarray(pyfunc.predict(X)), fitted.predict(X))


def test_promotion_moves_champion_and_keeps_the_old_one_as_previous(registry, make_record, ledger):
    first = promote_new(registry, make_record)
    second = promote_new(registry, make_record)

    assert registry.aliases() == {"champion": second, "previous": first}
    history = [
        (a["alias"], a["from_version"], a["to_version"])
        for a in ledger.alias_history(registry.model_name)
    ]
    assert ("champion", first, second) in history
    assert ("previous", None, first) in history
    assert ("challenger", second, None) in history
    assert registry.version(second).tags["retrain.approver"] == "ana"


def test_a_rejected_or_failed_decision_never_moves_the_champion(registry, make_record):
    champion = promote_new(registry, make_record)
    candidate = registry.register_candidate(make_record(), actor="test")
    rejected = decide(
        version=candidate,
        gate_passed=True,
        gate_reasons=("ok",),
        approval=Approval(approved=False, approver="bob", comment="not convinced"),
    )
    registry.record_decision(rejected)

    with pytest.raises(PromotionRefused, match="not promoted: gate passed; rejected by bob"):
        registry.promote(rejected, actor="bob")
    assert registry.alias_version("champion") == champion
    assert registry.version(candidate).tags["retrain.approval"] == "rejected"


def test_the_registry_refuses_a_champion_whose_tags_do_not_say_gated_and_approved(
    registry, make_record
):
    version = registry.register_candidate(make_record(), actor="test")
    # A decision object that claims promotion, but nothing was recorded on the version.
    forged = approved(version)

    with pytest.raises(PromotionRefused, match="only a version that passed the backtest gate"):
        registry.promote(forged, actor="mallory")
    assert registry.alias_version("champion") is None

    failed_gate = decide(version=version, gate_passed=False, gate_reasons=("worse",), approval=None)
    registry.record_decision(failed_gate)
    with pytest.raises(PromotionRefused, match="only a version that passed"):
        registry.promote(automatic_approval_decision(version), actor="mallory")


def test_a_decision_is_final_a_champion_cannot_be_re_decided_as_rejected(registry, make_record):
    champion = promote_new(registry, make_record)
    late = decide(
        version=champion,
        gate_passed=True,
        gate_reasons=("ok",),
        approval=Approval(approved=False, approver="bob", comment="changed my mind"),
    )

    with pytest.raises(DecisionFinal, match=f"version {champion} of .* was already decided"):
        registry.record_decision(late)
    tags = registry.version(champion).tags
    assert (tags["retrain.approval"], registry.alias_version("champion")) == ("approved", champion)


def automatic_approval_decision(version: str):
    return decide(
        version=version, gate_passed=True, gate_reasons=("x",), approval=automatic_approval("bot")
    )


def test_rollback_swaps_champion_and_previous_and_is_audited(registry, make_record, ledger):
    first = promote_new(registry, make_record)
    second = promote_new(registry, make_record)

    assert registry.rollback(actor="oncall", reason="bad predictions") == (second, first)
    assert registry.aliases() == {"champion": first, "previous": second}
    last = ledger.alias_history(registry.model_name)[-2]
    assert (last["alias"], last["to_version"], last["actor"]) == ("champion", first, "oncall")
    assert "rollback: bad predictions" in last["reason"]


def test_rollback_without_a_previous_champion_is_an_error(registry, make_record):
    promote_new(registry, make_record)
    with pytest.raises(RegistryError, match="no previous version: there is nothing to roll back"):
        registry.rollback(actor="oncall", reason="x")


def test_unknown_version_is_reported_with_the_model_name(registry):
    with pytest.raises(RegistryError, match=r"has no version 42"):
        registry.version("42")
    assert registry.alias_version("champion") is None
    assert registry.aliases() == {}
    assert registry.versions() == []


def test_version_listing_is_in_version_order(registry, make_record):
    for _ in range(3):
        registry.register_candidate(make_record(), actor="t")
    assert [v.version for v in registry.versions()] == ["1", "2", "3"]
    assert pd.Series([v.aliases for v in registry.versions()]).tolist()[-1] == ("challenger",)


def test_loading_a_version_again_and_again_leaves_no_module_behind(registry, make_record):
    """A monitor loads its champion at every check: each load must not add to sys.modules
    (MLflow imports a model-from-code file under a new module name at every load)."""
    version = registry.register_candidate(make_record(), actor="tester")
    registry.load_model(version)  # the first load may import what it needs for good
    modules = set(sys.modules)

    for _ in range(3):
        assert registry.load_model(version).feature_names_ == FEATURES

    assert set(sys.modules) - modules == set()


def test_one_registry_builds_one_mlflow_client_and_one_store_of_each_kind(
    tmp_path, ledger, make_record, monkeypatch
):
    """A retrain's registry calls (register, decide, promote, read, load) share one MlflowClient
    and one tracking and one model-registry store: none is built again per call."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # no store of it cached yet
    built: list[tuple[str, str]] = []

    def counting(kind: str, cls):
        init = cls.__init__

        def counted(self, *args, **kwargs):
            given = args[0] if args else kwargs.get("db_uri", kwargs.get("tracking_uri"))
            if given == uri:  # not the private file the database is first built in
                built.append((kind, given))
            init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counted)

    counting("tracking", TrackingStore)
    counting("registry", RegistryStore)
    counting("client", MlflowClient)
    registry = ModelRegistry(uri, "one-client", ledger, artifact_root=tmp_path / "artifacts")

    first = promote_new(registry, make_record)
    second = promote_new(registry, make_record)
    registry.load_model(second)
    registry.versions()
    registry.rollback("ana", "test")

    assert registry.alias_version("champion") == first
    kinds = [kind for kind, _ in built]
    assert sorted(kinds) == ["client", "registry", "tracking"], built


def counting_calls(monkeypatch, cls, name: str) -> list[tuple]:
    """Record every call of ``cls.name`` (its arguments after self, then its keyword
    arguments' values), calling it through."""
    calls: list[tuple] = []
    method = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls.append(args + tuple(kwargs.values()))
        return method(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


DECISION_TAGS = (
    "retrain.gate",
    "retrain.approval",
    "retrain.approver",
    "retrain.approval_comment",
    "retrain.approval_automatic",
    "retrain.decision",
)


def test_a_decision_writes_every_decision_tag_and_never_reads_the_registered_model(
    registry, make_record, monkeypatch
):
    """The six decision tags are on the version after ``record_decision``; the gate tag,
    written at registration with the same value, is not written again; and neither the tags
    nor the challenger alias make MLflow read the registered model (MlflowClient's check that
    the name is not a prompt, one read of the model and its versions per call)."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore

    version = registry.register_candidate(make_record(**{"retrain.gate": "passed"}), actor="t")
    reads = counting_calls(monkeypatch, RegistryStore, "get_registered_model")
    writes = counting_calls(monkeypatch, RegistryStore, "set_model_version_tag")
    decision = approved(version, who="ana")
    registry.record_decision(decision)

    tags = registry.version(version).tags
    assert {key: tags.get(key) for key in DECISION_TAGS} == {
        "retrain.gate": "passed",
        "retrain.approval": "approved",
        "retrain.approver": "ana",
        "retrain.approval_comment": "ok",
        "retrain.approval_automatic": "false",
        "retrain.decision": decision.reason,
    }
    assert sorted(w[2].key for w in writes) == [
        "retrain.approval",
        "retrain.approval_automatic",
        "retrain.approval_comment",
        "retrain.approver",
        "retrain.decision",
    ]
    assert reads == []

    registry.promote(decision, actor="ana")  # sets champion, deletes challenger
    assert len(reads) == 2  # promote's own reads of the aliases (its check, then the change)
    assert registry.aliases() == {"champion": version}


def test_a_gate_that_infra_validation_failed_is_written_over_the_registered_gate_tag(
    registry, make_record
):
    version = registry.register_candidate(make_record(**{"retrain.gate": "passed"}), actor="t")
    failed = decide(
        version=version, gate_passed=False, gate_reasons=("infra validation failed",), approval=None
    )

    registry.record_decision(failed)

    tags = registry.version(version).tags
    assert (tags["retrain.gate"], tags["retrain.approval"]) == ("failed", "none")


def test_an_evidence_folder_is_logged_in_one_call_and_a_file_elsewhere_on_its_own(
    registry, make_record, tracking_uri, tmp_path, monkeypatch
):
    """A family writes its evidence into one folder: logged with one ``log_artifacts``; a file
    in a folder of other files too (a drift report among the earlier checks') with
    ``log_artifact``; every listed file under ``evidence/``, nothing else."""
    from dataclasses import replace

    folder = tmp_path / "evidence-folder"
    folder.mkdir()
    (folder / "backtest.csv").write_text("model,mae\ncandidate,1.0\n")
    (folder / "backtest.md").write_text("# backtest\n")
    report = tmp_path / "reports" / "drift-check-7.png"
    report.parent.mkdir()
    report.write_bytes(b"png")
    (report.parent / "drift-check-6.png").write_bytes(b"an earlier check's, not evidence")
    record = replace(
        make_record(),
        artifacts={
            "backtest_table": folder / "backtest.csv",
            "backtest_report": folder / "backtest.md",
            "drift_report": report,
        },
    )
    folders = counting_calls(monkeypatch, MlflowClient, "log_artifacts")
    files = counting_calls(monkeypatch, MlflowClient, "log_artifact")

    version = registry.register_candidate(record, actor="tester")

    run_id = registry.version(version).run_id
    evidence = {f.path for f in MlflowClient(tracking_uri).list_artifacts(run_id, "evidence")}
    assert evidence == {
        "evidence/backtest.csv",
        "evidence/backtest.md",
        "evidence/drift-check-7.png",
    }
    assert [a[1] for a in folders if a[2:] == ("evidence",)] == [str(folder)]
    assert [a[1] for a in files] == [str(report)]


def test_registering_after_the_champion_was_read_reads_the_registered_model_once(
    registry, make_record, monkeypatch
):
    """A retrain reads its champion, then registers: the registered model is read once (the
    challenger alias change's read of the aliases), not again to check that it exists (it
    does: its champion was just read) nor to check that it is not a prompt. Each such read
    loads every version of the model: a cost that grows with its history."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore

    champion = promote_new(registry, make_record)
    retrain = ModelRegistry(
        registry.tracking_uri, registry.model_name, registry.ledger, registry.artifact_root
    )
    reads = counting_calls(monkeypatch, RegistryStore, "get_registered_model")

    assert retrain.alias_info("champion").version == champion
    version = retrain.register_candidate(make_record(), actor="t")

    assert retrain.aliases() == {"champion": champion, "challenger": version}
    assert len(reads) == 2  # the alias change's, then this test's own
