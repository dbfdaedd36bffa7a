"""One alias change is one audited step: intent in the ledger first, moves in MLflow, then done
with its audit rows; whatever fails in between (the ledger down or read only, MLflow failing,
SIGKILL) the next recovery reverts it and says so."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest
from mlflow.exceptions import MlflowException

from registry import ModelRegistry, PromotionRefused, RegistryError
from retrain.errors import LedgerError
from retrain.ledger import Ledger
from retrain.promotion import PromotionDecision
from tests.conftest import postgres_schema
from tests.registry.audit import Injected, audit_replays_to_aliases, fail_at


def decision(version: str) -> PromotionDecision:
    return PromotionDecision(version, True, True, True, "ana", "ok", False, "gate passed; ok")


def promoted(registry: ModelRegistry, make_record, **tags: str) -> str:
    version = registry.register_candidate(make_record(**tags), actor="test")
    registry.record_decision(decision(version))
    registry.promote(decision(version), actor="ana")
    return version


def approved_candidate(registry: ModelRegistry, make_record, **tags: str) -> str:
    version = registry.register_candidate(make_record(**tags), actor="test")
    registry.record_decision(decision(version))
    return version


@pytest.fixture
def three(registry, make_record):
    """champion v2, previous v1, and v3 registered and approved (challenger)."""
    first, second = promoted(registry, make_record), promoted(registry, make_record)
    third = approved_candidate(registry, make_record)
    return first, second, third


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_a_promotion_that_fails_at_any_step_is_reverted_by_the_next_run(registry, three, step):
    first, second, third = three
    before = registry.aliases()
    registry.fault_hook = fail_at(step)
    with pytest.raises(Injected):
        registry.promote(decision(third), actor="ana")
    registry.fault_hook = None
    assert len(registry.ledger.pending_alias_changes(registry.model_name)) == 1

    [note] = registry.recover_alias_changes()

    assert (
        registry.aliases()
        == before
        == {
            "champion": second,
            "previous": first,
            "challenger": third,
        }
    )
    assert "was interrupted" in note
    assert registry.ledger.pending_alias_changes(registry.model_name) == []
    audit_replays_to_aliases(registry)
    # and the promotion, tried again, goes through
    registry.promote(decision(third), actor="ana")
    assert registry.aliases() == {"champion": third, "previous": second}
    audit_replays_to_aliases(registry)


def test_mlflow_failing_halfway_is_one_clear_error_and_nothing_is_audited(registry, three):
    first, second, third = three
    audited = len(registry.ledger.alias_history(registry.model_name))

    def mlflow_dies(step: int, what: str) -> None:
        if step == 2:
            raise MlflowException("API request failed: Connection refused")

    registry.fault_hook = mlflow_dies
    with pytest.raises(
        RegistryError, match=r"stopped halfway.*does not answer.*nothing was audited"
    ):
        registry.rollback(actor="oncall", reason="bad")
    registry.fault_hook = None
    assert len(registry.ledger.alias_history(registry.model_name)) == audited

    was, now = registry.rollback(actor="oncall", reason="bad")  # the retry recovers first

    assert (was, now) == (second, first)
    assert registry.aliases() == {"champion": first, "previous": second, "challenger": third}
    audit_replays_to_aliases(registry)
    last = registry.ledger.alias_history(registry.model_name)[-2:]
    assert [(r["alias"], r["from_version"], r["to_version"]) for r in last] == [
        ("champion", second, first),
        ("previous", first, second),
    ]


def test_a_promotion_killed_at_a_step_is_reverted_by_the_next_run(
    registry, three, tracking_uri, ledger, tmp_path
):
    _, second, third = three
    before = registry.aliases()
    for step in (1, 2, 3, 4):
        child = textwrap.dedent(
            f"""
            import os, signal
            from registry import ModelRegistry
            from retrain.ledger import Ledger
            from retrain.promotion import PromotionDecision
            registry = ModelRegistry({tracking_uri!r}, {registry.model_name!r},
                                     Ledger({ledger.url!r}))
            def die(step, what):
                if step == {step}:
                    os.kill(os.getpid(), signal.SIGKILL)
            registry.fault_hook = die
            registry.promote(PromotionDecision({third!r}, True, True, True, "ana", "", False,
                                               "ok"), actor="ana")
            """
        )
        killed = subprocess.run(
            [sys.executable, "-c", child], cwd=tmp_path, capture_output=True, timeout=300
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
        [pending] = registry.ledger.pending_alias_changes(registry.model_name)
        moved = registry.aliases()
        assert moved["champion"] == (third if step > 1 else second)

        [note] = registry.recover_alias_changes()

        assert f"alias change {pending.id} by ana was interrupted" in note
        assert registry.aliases() == before
        audit_replays_to_aliases(registry)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def read_only_ledger_url(request, tmp_path) -> Iterator[tuple[str, str]]:
    """(writable URL, read-only URL) of one ledger database."""
    if request.param == "sqlite":
        path = tmp_path / "ro" / "ledger.db"
        yield f"sqlite:///{path}", f"sqlite:///file:{path}?mode=ro&uri=true"
        return
    with postgres_schema(request.getfixturevalue("postgres_url"), "test_alias") as url:
        yield url, url + "%20-cdefault_transaction_read_only%3Don"


def test_a_rollback_with_the_ledger_read_only_refuses_and_moves_nothing(
    tracking_uri, make_record, read_only_ledger_url, tmp_path
):
    writable, read_only = read_only_ledger_url
    Ledger(writable).migrate()
    name = f"ro-{uuid.uuid4().hex[:8]}"
    registry = ModelRegistry(tracking_uri, name, Ledger(writable), tmp_path / "artifacts")
    first, second = promoted(registry, make_record), promoted(registry, make_record)
    audited = len(registry.ledger.alias_history(name))
    locked = ModelRegistry(tracking_uri, name, Ledger(read_only), tmp_path / "artifacts")

    for _ in range(2):  # and a retry says the same
        with pytest.raises(LedgerError, match=r"down or read only; nothing was moved.*retry"):
            locked.rollback(actor="oncall", reason="bad")
        assert registry.aliases() == {"champion": second, "previous": first}
    assert len(registry.ledger.alias_history(name)) == audited
    assert registry.ledger.pending_alias_changes(name) == []
    registry.ledger.dispose()
    locked.ledger.dispose()


def test_rollback_to_a_named_version_keeps_the_replaced_champion_as_previous(registry, make_record):
    first, second, third = (promoted(registry, make_record) for _ in range(3))

    assert registry.rollback(actor="oncall", reason="two back", to=first) == (third, first)
    assert registry.aliases() == {"champion": first, "previous": third}
    audit_replays_to_aliases(registry)
    with pytest.raises(RegistryError, match=f"version {first} .* is already the champion"):
        registry.rollback(actor="oncall", reason="again", to=first)
    assert second  # still an approved version a later rollback may name


def test_rollback_to_a_version_that_was_never_approved_is_refused(registry, make_record):
    promoted(registry, make_record)
    rejected = registry.register_candidate(make_record(), actor="test")

    with pytest.raises(PromotionRefused, match=r"cannot roll back to it: .* only a version that"):
        registry.rollback(actor="oncall", reason="x", to=rejected)


def test_promoting_the_same_model_again_keeps_the_last_different_champion_as_previous(
    registry, make_record
):
    same = {"retrain.feature_spec_hash": "f1", "retrain.config_hash": "c1"}
    first = promoted(registry, make_record, **{"retrain.data_version": "dv-a", **same})
    second = promoted(registry, make_record, **{"retrain.data_version": "dv-b", **same})
    again = promoted(registry, make_record, **{"retrain.data_version": "dv-b", **same})

    assert registry.aliases() == {"champion": again, "previous": first}
    assert second != again
    audit_replays_to_aliases(registry)


def test_a_version_moved_into_champion_by_hand_never_becomes_previous(registry, make_record):
    promoted(registry, make_record)
    rogue = registry.register_candidate(make_record(), actor="test")  # never gated or approved
    registry.client.set_registered_model_alias(registry.model_name, "champion", rogue)
    third = approved_candidate(registry, make_record)

    registry.promote(decision(third), actor="ana")

    assert registry.aliases() == {"champion": third}
    with pytest.raises(PromotionRefused, match="cannot roll back to it"):
        registry.rollback(actor="oncall", reason="x", to=rogue)
