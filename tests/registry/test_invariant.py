"""Property test: over any sequence of register / gate / approve / reject / rollback / forged
promotion, and of promotions and rollbacks that fail at any step of their alias change (then
recovered), `champion` only ever points to a version that passed the gate and was approved, and
the audit replays to the registry's aliases (every alias change is audited, none twice)."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from registry import DecisionFinal, ModelRegistry, PromotionRefused, RegistryError
from registry.client import APPROVAL_TAG, GATE_TAG
from retrain.ledger import Ledger
from retrain.promotion import Approval, PromotionDecision, decide
from tests.registry.audit import Injected, audit_replays_to_aliases, fail_at


def make_machine(tracking_uri: str, ledger_url: str, artifact_root, make_record):
    class RegistryMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            ledger = Ledger(ledger_url)
            ledger.migrate()
            self.registry = ModelRegistry(
                tracking_uri,
                f"inv-{uuid.uuid4().hex[:10]}",
                ledger,
                artifact_root=artifact_root,
            )
            self.versions: list[str] = []
            self.gate: dict[str, bool] = {}
            self.decided: set[str] = set()
            self.approved: list[str] = []

        @initialize()
        def two_approved_versions(self) -> None:
            """Start from a champion and a previous champion, so alias changes have work."""
            for _ in range(2):
                version = self.registry.register_candidate(make_record(), actor="prop")
                self.versions.append(version)
                self.gate[version] = True
                self.decided.add(version)
                self.approved.append(version)
                self.registry.record_decision(approved_decision(version))
                self.registry.promote(approved_decision(version), actor="prop")

        @rule()
        def register(self) -> None:
            self.versions.append(self.registry.register_candidate(make_record(), actor="prop"))

        @precondition(lambda self: self.versions)
        @rule(data=st.data(), passed=st.booleans())
        def backtest(self, data, passed: bool) -> None:
            self.gate[data.draw(st.sampled_from(self.versions))] = passed

        @precondition(lambda self: self.gate)
        @rule(data=st.data(), approve=st.booleans())
        def answer(self, data, approve: bool) -> None:
            version = data.draw(st.sampled_from(sorted(self.gate)))
            decision = decide(
                version=version,
                gate_passed=self.gate[version],
                gate_reasons=("property test",),
                approval=Approval(approved=approve, approver="prop"),
            )
            if version in self.decided:  # a decision is final: never re-decided
                try:
                    self.registry.record_decision(decision)
                    raise AssertionError(f"version {version} was decided twice")
                except DecisionFinal:
                    return
            self.registry.record_decision(decision)
            self.decided.add(version)
            if decision.promote:
                self.approved.append(version)
                self.registry.promote(decision, actor="prop")
            else:
                try:
                    self.registry.promote(decision, actor="prop")
                    raise AssertionError("a refused decision moved the champion")
                except PromotionRefused:
                    pass

        @precondition(lambda self: self.versions)
        @rule(data=st.data())
        def forged_promotion(self, data) -> None:
            """A caller that skips the gate and approval and claims promotion anyway."""
            version = data.draw(st.sampled_from(self.versions))
            tags = self.registry.version(version).tags
            forged = PromotionDecision(version, True, True, True, "mallory", "", False, "forged")
            legit = tags.get(GATE_TAG) == "passed" and tags.get(APPROVAL_TAG) == "approved"
            try:
                self.registry.promote(forged, actor="mallory")
                assert legit, "a version without gate+approval tags became champion"
            except PromotionRefused:
                assert not legit

        @rule()
        def rollback(self) -> None:
            aliases = self.registry.aliases()
            try:
                self.registry.rollback(actor="prop", reason="property test")
                assert "champion" in aliases and "previous" in aliases
            except RegistryError:
                assert "champion" not in aliases or "previous" not in aliases

        @invariant()
        def champion_passed_the_gate_and_was_approved(self) -> None:
            for alias in ("champion", "previous"):
                version = self.registry.alias_version(alias)
                if version is not None:
                    tags = self.registry.version(version).tags
                    assert tags.get(GATE_TAG) == "passed", (alias, version, tags)
                    assert tags.get(APPROVAL_TAG) == "approved", (alias, version, tags)

        @precondition(lambda self: self.approved)
        @rule(
            data=st.data(),
            step=st.integers(min_value=0, max_value=4),
            recover=st.booleans(),
        )
        def promotion_or_rollback_that_fails_at_a_step(self, data, step: int, recover: bool):
            """The alias change raises before its step ``step`` (0: the intent, 1..n: a move,
            n + 1: marking it done); then recovery, now or by the next operation."""
            version = data.draw(st.sampled_from(self.approved))
            rollback = data.draw(st.booleans())
            if recover:  # else the change below recovers an earlier one first
                self.registry.recover_alias_changes()
            before = self.registry.aliases()
            self.registry.fault_hook = fail_at(step)
            outcome: Exception | None = None
            try:
                if rollback:
                    self.registry.rollback(actor="prop", reason="faulty rollback", to=version)
                else:
                    self.registry.promote(approved_decision(version), actor="prop")
            except (Injected, RegistryError) as exc:
                outcome = exc
            finally:
                self.registry.fault_hook = None
            if recover:
                self.registry.recover_alias_changes()
                assert self.registry.ledger.pending_alias_changes(self.registry.model_name) == []
                if isinstance(outcome, Injected):  # an interrupted change is undone
                    assert self.registry.aliases() == before

        @invariant()
        def the_audit_replays_to_the_aliases(self) -> None:
            if not self.registry.ledger.pending_alias_changes(self.registry.model_name):
                audit_replays_to_aliases(self.registry)

    return RegistryMachine


def approved_decision(version: str) -> PromotionDecision:
    return PromotionDecision(version, True, True, True, "prop", "", False, "property test")


def test_champion_invariant_holds_over_random_operation_sequences(
    tracking_uri, tmp_path, make_record
):
    machine = make_machine(
        tracking_uri, f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "artifacts", make_record
    )
    test_case = machine.TestCase
    test_case.settings = settings(
        max_examples=15,
        stateful_step_count=14,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    test_case().runTest()
