"""Property test: over any sequence of register / gate / approve / reject / rollback / forged
promotion, `champion` only ever points to a version that passed the gate and was approved, and
every alias change is audited."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from registry import DecisionFinal, ModelRegistry, PromotionRefused, RegistryError
from registry.client import APPROVAL_TAG, GATE_TAG
from retrain.ledger import Ledger
from retrain.promotion import Approval, PromotionDecision, decide


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
            self.alias_changes = 0
            self.last_aliases: dict[str, str] = {}

        def _count_alias_changes(self) -> None:
            now = self.registry.aliases()
            changed = {
                a
                for a in set(now) | set(self.last_aliases)
                if now.get(a) != self.last_aliases.get(a)
            }
            self.alias_changes += len(changed)
            self.last_aliases = now

        @rule()
        def register(self) -> None:
            self.versions.append(self.registry.register_candidate(make_record(), actor="prop"))
            self._count_alias_changes()

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
                self.registry.promote(decision, actor="prop")
            else:
                try:
                    self.registry.promote(decision, actor="prop")
                    raise AssertionError("a refused decision moved the champion")
                except PromotionRefused:
                    pass
            self._count_alias_changes()

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
            self._count_alias_changes()

        @rule()
        def rollback(self) -> None:
            aliases = self.registry.aliases()
            try:
                self.registry.rollback(actor="prop", reason="property test")
                assert "champion" in aliases and "previous" in aliases
            except RegistryError:
                assert "champion" not in aliases or "previous" not in aliases
            self._count_alias_changes()

        @invariant()
        def champion_passed_the_gate_and_was_approved(self) -> None:
            for alias in ("champion", "previous"):
                version = self.registry.alias_version(alias)
                if version is not None:
                    tags = self.registry.version(version).tags
                    assert tags.get(GATE_TAG) == "passed", (alias, version, tags)
                    assert tags.get(APPROVAL_TAG) == "approved", (alias, version, tags)

        @invariant()
        def every_alias_change_is_audited(self) -> None:
            audit = self.registry.ledger.alias_history(self.registry.model_name)
            assert len(audit) == self.alias_changes

    return RegistryMachine


def test_champion_invariant_holds_over_random_operation_sequences(
    tracking_uri, tmp_path, make_record
):
    machine = make_machine(
        tracking_uri, f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "artifacts", make_record
    )
    test_case = machine.TestCase
    test_case.settings = settings(
        max_examples=12,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    test_case().runTest()
