"""MLflow tracking and model registry: candidates, aliases, lineage tags and the alias audit.

Invariant enforced here: the ``champion`` alias only ever points to a version whose tags say the
backtest gate passed AND the promotion was approved. Every alias change is written to the ledger.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import lightgbm
import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy
import pandas
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

import retrain
from registry.errors import (
    DecisionFinal,
    PromotionRefused,
    RegistryError,
    UntrustedModel,
    VersionNotFound,
)
from retrain.config import StateSpec
from retrain.families.lineage import Lineage, Tag
from retrain.ledger import Ledger
from retrain.promotion import PromotionDecision
from retrain.redact import redact_url

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
GATE_TAG, APPROVAL_TAG = str(Tag.GATE), str(Tag.APPROVAL)
# models from code: no pickle, the loader imports registry.pyfunc
MODEL_CODE = {
    "lightgbm": Path(__file__).with_name("lightgbm_model_code.py"),
    "als": Path(__file__).with_name("als_model_code.py"),
}
# the MLflow UI opens an experiment with this tag in its classic ML view, not the GenAI one
EXPERIMENT_KIND, CLASSIC_ML = "mlflow.experimentKind", "custom_model_development"
# the module name MLflow gives a model-from-code file it loads (mlflow.models.utils)
CODE_MODULE_PREFIX = "code_model_"


@dataclass(frozen=True)
class CandidateRecord:
    """What one retrain logs: the run (params, metrics, evidence) and the model version."""

    model_dir: Path
    description: str
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    version_tags: Mapping[str, str]
    artifacts: Mapping[str, Path] = field(default_factory=dict)
    curves: Mapping[str, list[float]] = field(default_factory=dict)
    run_name: str | None = None
    # A few input rows: the model's signature and input example
    sample: pandas.DataFrame | None = None
    family: str = "lightgbm"
    # parameters the model's predict takes, with their defaults (e.g. ALS: {"k": 10})
    predict_params: Mapping[str, Any] | None = None


def _requirements(family: str) -> list[str]:
    engine = (
        f"implicit=={importlib.metadata.version('implicit')}"
        if family == "als"
        else f"lightgbm=={lightgbm.__version__}"
    )
    return [
        engine,
        f"pandas=={pandas.__version__}",
        f"numpy=={numpy.__version__}",
        f"retrain=={retrain.__version__}",
    ]


@dataclass(frozen=True)
class VersionInfo:
    version: str
    run_id: str | None
    tags: dict[str, str]
    aliases: tuple[str, ...]
    description: str | None


# what MLflow's REST client says when the server is down or dies in the middle of a request
UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish",
    "Connection broken",
    "Connection aborted",
    "Connection reset",
)
F = TypeVar("F", bound=Callable[..., Any])


def reachable(method: F) -> F:
    """Turn "the tracking server does not answer" into a RegistryError naming the server.

    MLflow's HTTP client already retries with exponential backoff, bounded by
    MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (the CLI sets small
    defaults); when it gives up, the flow fails here with the champion untouched.
    """

    @functools.wraps(method)
    def wrapper(self: ModelRegistry, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except MlflowException as exc:
            if any(marker in str(exc) for marker in UNREACHABLE):
                raise RegistryError(
                    f"the MLflow tracking server {self.safe_uri()} does not answer (gave up "
                    "after its retries): start it or fix RETRAIN_TRACKING_URI / "
                    "state.tracking_uri; nothing was changed in the registry"
                ) from None
            raise

    return cast(F, wrapper)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def initialise_sqlite_store(tracking_uri: str) -> None:
    """Create a new MLflow SQLite database atomically, so that a crash cannot leave it half-made.

    MLflow creates its schema with a long chain of alembic migrations on first use; on SQLite
    they are not one transaction, and a process killed in the middle leaves a database that no
    later process can open (``table _alembic_tmp_... already exists``). Here the schema is built
    in a private file that is then hard-linked into place, which either happens entirely or not
    at all; a process that loses the race simply uses the winner's file.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.init-*"):  # left by a killed process
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            stale.unlink(missing_ok=True)
    scratch = path.with_name(f".{path.name}.init-{os.getpid()}")
    scratch.unlink(missing_ok=True)
    scratch_uri = f"sqlite:///{scratch}"
    try:
        store = SqlAlchemyStore(scratch_uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store.engine.dispose()
        SqlAlchemyStore._engine_map.pop(scratch_uri, None)
        try:
            os.link(scratch, path)
            logger.info("created the MLflow database %s", path)
        except FileExistsError:
            logger.debug("another process created the MLflow database %s first", path)
    finally:
        scratch.unlink(missing_ok=True)


def _is_not_found(exc: MlflowException) -> bool:
    return exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"}


class ModelRegistry:
    """One registered model in one MLflow tracking/registry server (SQLite file by default)."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        ledger: Ledger,
        artifact_root: Path | str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.ledger = ledger
        self.artifact_root = artifact_root
        self._client: MlflowClient | None = None

    @classmethod
    def for_spec(cls, spec: StateSpec, model_name: str, ledger: Ledger) -> ModelRegistry:
        """The registry of a spec's state: its tracking store and artifact destination."""
        return cls(spec.tracking, model_name, ledger, artifact_root=spec.artifact_destination)

    def safe_uri(self) -> str:
        """The tracking URI without credentials (user:password@ or token= parts)."""
        return redact_url(self.tracking_uri)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            initialise_sqlite_store(self.tracking_uri)
            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client

    # -- experiment and registered model ------------------------------------------------------
    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.model_name)
        if exp is not None:
            if EXPERIMENT_KIND not in exp.tags:  # made before retrain tagged its experiments
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, CLASSIC_ML)
            return str(exp.experiment_id)
        location = None
        if isinstance(self.artifact_root, str) and "://" in self.artifact_root:
            # object storage (s3://bucket/prefix): MLflow's own artifact repository writes there,
            # configured by its environment (MLFLOW_S3_ENDPOINT_URL, AWS_* credentials)
            location = f"{self.artifact_root.rstrip('/')}/{self.model_name}"
        elif self.artifact_root is not None:
            root = Path(self.artifact_root)
            root.mkdir(parents=True, exist_ok=True)
            location = root.resolve().as_uri()
        return str(
            self.client.create_experiment(
                self.model_name, artifact_location=location, tags={EXPERIMENT_KIND: CLASSIC_ML}
            )
        )

    def _ensure_registered_model(self) -> None:
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if not _is_not_found(exc):
                raise
            self.client.create_registered_model(
                self.model_name,
                description="managed by retrain: aliases champion/challenger/previous",
            )

    # -- reading ------------------------------------------------------------------------------
    @reachable
    def alias_version(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException as exc:
            if _is_not_found(exc):
                return None
            raise

    @reachable
    def aliases(self) -> dict[str, str]:
        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if _is_not_found(exc):
                return {}
            raise
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}

    @reachable
    def version(self, version: str) -> VersionInfo:
        try:
            mv = self.client.get_model_version(self.model_name, str(version))
        except MlflowException as exc:
            if _is_not_found(exc):
                raise VersionNotFound(
                    f"model {self.model_name!r} has no version {version}: see `retrain status`"
                ) from None
            raise
        return VersionInfo(
            version=str(mv.version),
            run_id=mv.run_id,
            tags=dict(mv.tags or {}),
            aliases=tuple(mv.aliases or ()),
            description=mv.description,
        )

    @reachable
    def versions(self) -> list[VersionInfo]:
        try:
            found = self.client.search_model_versions(f"name = '{self.model_name}'")
        except MlflowException as exc:
            if _is_not_found(exc):
                return []
            raise
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases().items():
            by_version.setdefault(version, []).append(alias)
        infos = [
            VersionInfo(
                str(mv.version),
                mv.run_id,
                dict(mv.tags or {}),
                tuple(sorted(by_version.get(str(mv.version), []))),
                mv.description,
            )
            for mv in found
        ]
        return sorted(infos, key=lambda v: int(v.version))

    def lineage(self, version: str) -> list[VersionInfo]:
        """The version and its ancestors through ``retrain.parent_version``, newest first."""
        chain = [self.version(version)]
        seen = {chain[0].version}
        while (parent := Lineage(chain[-1].tags).parent_version) is not None:
            if parent in seen:
                raise RegistryError(f"lineage of version {version} loops at version {parent}")
            seen.add(parent)
            chain.append(self.version(parent))
        return chain

    def _trusted_model_uri(self, version: str) -> str:
        """Where a version's model lives, if that is inside this registry's own store.

        A version can be registered by hand (MLflow UI, another client) with a ``source``
        anywhere: another server, a shared folder, a bucket. Loading runs the model's code, so
        only a version whose model was logged by a run of this model's experiment, under that
        run's artifact location, is loaded; anything else is refused.
        """
        mv = self.client.get_model_version(self.model_name, version)
        uri = self.client.get_model_version_download_uri(self.model_name, version)
        where = f"version {version} of {self.model_name!r} points at {redact_url(uri)}"
        fix = (
            "retrain loads models only from its configured registry "
            f"({self.safe_uri()}): register the model with retrain, or delete that version"
        )
        if not mv.run_id:
            raise UntrustedModel(f"{where}, which no run of this registry logged; {fix}")
        run = self.client.get_run(mv.run_id)
        experiment = self.client.get_experiment_by_name(self.model_name)
        if experiment is None or run.info.experiment_id != experiment.experiment_id:
            raise UntrustedModel(f"{where}, logged by run {mv.run_id} of another experiment; {fix}")
        root = run.info.artifact_uri.rstrip("/")
        if not uri.startswith(f"{root}/"):
            raise UntrustedModel(
                f"{where}, outside the artifact store of its run ({redact_url(root)}); {fix}"
            )
        return uri

    @reachable
    def load_model(self, version: str) -> Any:
        """The fitted trainer of a version, loaded from this registry only."""
        uri = self._trusted_model_uri(str(version))
        with tempfile.TemporaryDirectory(prefix="retrain-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=self.tracking_uri
            )
            before = set(sys.modules)
            try:
                pyfunc = mlflow.pyfunc.load_model(local)
                return pyfunc.unwrap_python_model().trainer
            finally:
                # MLflow imports a model-from-code file under a new module name at every load
                # and never removes it: one module per load, for the life of the process (a
                # monitor loading its champion every check grew by ~50 KB per check)
                for name in set(sys.modules) - before:
                    if name.startswith(CODE_MODULE_PREFIX):
                        del sys.modules[name]

    # -- writing ------------------------------------------------------------------------------
    @reachable
    def register_candidate(
        self, record: CandidateRecord, actor: str, flow_run_id: str | None = None
    ) -> str:
        """Log the run and the model, create a new version, point ``challenger`` at it."""
        experiment_id = self._experiment_id()
        self._ensure_registered_model()
        run = self.client.create_run(
            experiment_id,
            run_name=record.run_name,
            tags={"mlflow.note.content": record.description, **record.version_tags},
        )
        run_id = run.info.run_id
        try:
            params = [Param(k, str(v)[:6000]) for k, v in sorted(record.params.items())]
            metrics = [Metric(k, float(v), 0, 0) for k, v in sorted(record.metrics.items())]
            for name, values in record.curves.items():
                metrics += [Metric(name, float(v), 0, i) for i, v in enumerate(values)]
            tags = [RunTag(str(Tag.MODEL_NAME), self.model_name)]
            for start in range(0, max(len(metrics), 1), 900):
                self.client.log_batch(
                    run_id,
                    metrics=metrics[start : start + 900],
                    params=params if start == 0 else [],
                    tags=tags if start == 0 else [],
                )
            for path in record.artifacts.values():
                self.client.log_artifact(run_id, str(path), artifact_path="evidence")
            with tempfile.TemporaryDirectory(prefix="retrain-pyfunc-") as tmp:
                model_path = Path(tmp) / "model"
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*type hint.*")
                    mlflow.pyfunc.save_model(
                        str(model_path),
                        python_model=str(MODEL_CODE[record.family]),
                        signature=(
                            infer_signature(
                                record.sample,
                                params=dict(record.predict_params or {}) or None,
                            )
                            if record.sample is not None
                            else None
                        ),
                        artifacts={"trainer": str(record.model_dir)},
                        pip_requirements=_requirements(record.family),
                    )
                self.client.log_artifacts(run_id, str(model_path), artifact_path="model")
            source = f"{run.info.artifact_uri}/model"
            mv = self.client.create_model_version(
                self.model_name,
                source=source,
                run_id=run_id,
                tags=dict(record.version_tags),
                description=record.description,
            )
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        version = str(mv.version)
        self._move_alias(CHALLENGER, version, actor, "new candidate registered", flow_run_id)
        logger.info("registered %s version %s (run %s)", self.model_name, version, run_id)
        return version

    @reachable
    def record_decision(self, decision: PromotionDecision) -> None:
        """Write the gate and approval outcome on the version (before any alias move).

        A decision is final: a version that already has one (a champion that was approved, a
        candidate the gate refused) is never re-decided, so its tags keep saying why it is
        where it is. Refuses with DecisionFinal.
        """
        earlier = self.version(decision.version).tags
        if APPROVAL_TAG in earlier:  # the gate tag is written at registration, this one here
            raise DecisionFinal(
                f"version {decision.version} of {self.model_name} was already decided "
                f"(gate {earlier[GATE_TAG]}, approval {earlier.get(APPROVAL_TAG)}: "
                f"{earlier.get(Tag.DECISION, '')}); a decision is final: retrain to get a "
                "new candidate, or `retrain rollback` to go back to the previous champion"
            )
        tags = {
            GATE_TAG: "passed" if decision.gate_passed else "failed",
            APPROVAL_TAG: (
                "approved" if decision.approved else ("rejected" if decision.approver else "none")
            ),
            Tag.APPROVER: decision.approver or "",
            Tag.APPROVAL_COMMENT: decision.comment or "",
            Tag.APPROVAL_AUTOMATIC: str(decision.automatic).lower(),
            Tag.DECISION: decision.reason,
        }
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, decision.version, str(key), value)

    def _move_alias(
        self, alias: str, version: str, actor: str, reason: str, flow_run_id: str | None
    ) -> None:
        before = self.alias_version(alias)
        if before == version:
            return
        self.client.set_registered_model_alias(self.model_name, alias, version)
        self.ledger.record_alias_change(
            self.model_name, alias, before, version, actor, reason, flow_run_id
        )

    def _delete_alias(self, alias: str, actor: str, reason: str, flow_run_id: str | None) -> None:
        before = self.alias_version(alias)
        if before is None:
            return
        self.client.delete_registered_model_alias(self.model_name, alias)
        self.ledger.record_alias_change(
            self.model_name, alias, before, None, actor, reason, flow_run_id
        )

    @reachable
    def promote(
        self, decision: PromotionDecision, actor: str, flow_run_id: str | None = None
    ) -> str | None:
        """Move ``champion`` to the decided version; the old champion becomes ``previous``.

        Refuses (PromotionRefused) unless the decision says promote AND the version's own tags
        in the registry say the gate passed and the promotion was approved.
        """
        version = decision.version
        if not decision.promote:
            raise PromotionRefused(
                f"version {version} was not promoted: {decision.reason}; the champion stays"
            )
        tags = self.version(version).tags
        if tags.get(GATE_TAG) != "passed" or tags.get(APPROVAL_TAG) != "approved":
            raise PromotionRefused(
                f"version {version} of {self.model_name} is tagged gate={tags.get(GATE_TAG)!r}, "
                f"approval={tags.get(APPROVAL_TAG)!r}: only a version that passed the backtest "
                "gate and was approved can become champion (call record_decision first)"
            )
        old = self.alias_version(CHAMPION)
        if old == version:
            return old
        self._move_alias(CHAMPION, version, actor, decision.reason, flow_run_id)
        if old is not None:
            self._move_alias(PREVIOUS, old, actor, f"replaced by version {version}", flow_run_id)
        if self.alias_version(CHALLENGER) == version:
            self._delete_alias(CHALLENGER, actor, f"version {version} promoted", flow_run_id)
        logger.info("%s: champion %s -> %s", self.model_name, old, version)
        return old

    @reachable
    def rollback(self, actor: str, reason: str, flow_run_id: str | None = None) -> tuple[str, str]:
        """Swap ``champion`` and ``previous`` in one step; returns (from, to)."""
        current, previous = self.alias_version(CHAMPION), self.alias_version(PREVIOUS)
        if current is None or previous is None:
            raise RegistryError(
                f"{self.model_name} has no {'champion' if current is None else 'previous'} "
                "version: there is nothing to roll back to"
            )
        self._move_alias(CHAMPION, previous, actor, f"rollback: {reason}", flow_run_id)
        self._move_alias(PREVIOUS, current, actor, f"rolled back from {current}", flow_run_id)
        return current, previous
