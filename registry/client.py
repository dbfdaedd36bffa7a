"""MLflow tracking and model registry: candidates, aliases, lineage tags and the alias audit.

Invariant enforced here: the ``champion`` alias only ever points to a version whose tags say the
backtest gate passed AND the promotion was approved. Every alias change is written to the ledger.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import pandas
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, ColSpec, Schema
from sqlalchemy import exc as sa_exc

from registry.errors import (
    DecisionFinal,
    PromotionRefused,
    RegistryError,
    TrackingUnreachable,
    UntrustedModel,
    VersionNotFound,
)
from registry.relocate import relocate
from registry.trust import drop_bytecode, inside, model_digest, verify_digest
from retrain import servable
from retrain.audit import AliasDrift, alias_drift
from retrain.config import StateSpec
from retrain.errors import LedgerError
from retrain.families.baseline import load_baseline
from retrain.families.lineage import Lineage, Tag, same_training
from retrain.ledger import AliasIntent, AliasMove, Ledger, now, owner_is_dead, process_owner
from retrain.promotion import PromotionDecision
from retrain.redact import redact_url
from retrain.trainers import ALSTrainer, LightGBMTrainer

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
GATE_TAG, APPROVAL_TAG = str(Tag.GATE), str(Tag.APPROVAL)
# models from code: no pickle; each file imports only mlflow and the bundled retrain_servable
MODEL_CODE = {
    "lightgbm": Path(__file__).with_name("lightgbm_model_code.py"),
    "als": Path(__file__).with_name("als_model_code.py"),
    # the trivial baselines of every family (gate.promote_baseline)
    "baseline": Path(__file__).with_name("baseline_model_code.py"),
}
# the MLflow UI opens an experiment with this tag in its classic ML view, not the GenAI one
EXPERIMENT_KIND, CLASSIC_ML = "mlflow.experimentKind", "custom_model_development"
# the module name MLflow gives a model-from-code file it loads (mlflow.models.utils)
CODE_MODULE_PREFIX = "code_model_"
# an alias change takes seconds: one pending for longer than this was abandoned
ALIAS_CHANGE_STALE = timedelta(minutes=10)


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
    # the raw columns the served model reads (None: its feature columns, as they are)
    inputs: servable.Inputs | None = None
    # gate.refit: the saved files of the fit the gate validated (the served fit is its refit),
    # kept inside the model (covered by its digest) for the next gates' equal-staleness
    # comparison (gate.equal_staleness); never served
    validated_dir: Path | None = None


# What each family's served model imports (retrain/servable.py, bundled in every version): the
# model's requirements, pinned to the versions installed here. retrain itself is never one.
SERVED_PACKAGES = {
    "lightgbm": ("mlflow", "lightgbm", "numpy", "pandas"),
    "als": ("mlflow", "numpy", "pandas", "pyarrow", "scipy"),
    "baseline": ("mlflow", "numpy", "pandas", "pyarrow", "scipy"),
}
# the name the bundled copy of retrain/servable.py is imported by inside a model
SERVABLE_MODULE = "retrain_servable"
# the model's artifact holding the validated fit of a refitted version (gate.refit)
VALIDATED_ARTIFACT = "validated"


def requirements(family: str) -> list[str]:
    """The model's pip requirements: real published packages at their installed versions."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in SERVED_PACKAGES[family]]


def _served_model(family: str, trainer_dir: Path, inputs: Path | None) -> Any:
    """The model as a served version loads it (the bundled code, in this process)."""
    if family == "als":
        return servable.RecommenderModel.load(trainer_dir, inputs)
    if family == "baseline":
        return servable.load_baseline(trainer_dir, inputs)
    return servable.TabularModel.load(trainer_dir, inputs)


def _signature(record: CandidateRecord, trainer_dir: Path, inputs: Path | None) -> Any:
    """Input schema on the sample's own columns and types, the output schema of its answer.

    The timestamp column (a date string, epoch number or datetime in the source) and a
    recommender's user ids (strings or integers) are typed ``Any``; every other column keeps
    the source's type (an integer column stays ``long``).
    """
    if record.sample is None or record.sample.empty:
        return None
    params = dict(record.predict_params or {})
    model = _served_model(record.family, trainer_dir, inputs)
    try:
        answer = model.predict(record.sample, **params)
    except servable.ServableError as exc:
        raise RegistryError(
            f"the model cannot score its own input example ({exc}): the sample rows must be "
            "the source's raw columns"
        ) from None
    inferred = infer_signature(record.sample, answer, params=params or None)
    anytyped: set[str] = set()
    optional: set[str] = set()
    if isinstance(record.inputs, servable.TabularInputs) and record.inputs.timestamp:
        anytyped.add(record.inputs.timestamp)
    if isinstance(record.inputs, servable.QueryInputs):
        anytyped.update(record.inputs.columns)
        if len(record.inputs.columns) > 1:  # the source's user column, or `user`
            optional.update(record.inputs.columns)
    specs = [
        ColSpec(AnyType(), col.name, required=col.name not in optional)
        if col.name in anytyped
        else col
        for col in inferred.inputs.inputs
    ]
    specs += [
        ColSpec(AnyType(), name, required=False)
        for name in sorted(optional - {c.name for c in specs})
    ]
    return ModelSignature(Schema(specs), inferred.outputs, inferred.params)


def save_servable(record: CandidateRecord, directory: Path) -> Path:
    """Write the self-contained MLflow model of a candidate under ``directory/model``.

    The model is MLflow "model from code": the family's small wrapper file, with
    ``retrain/servable.py`` bundled as ``retrain_servable.py`` (``code_paths``), the trainer's
    saved files and the raw inputs as artifacts, a signature on the sample's raw columns, the
    sample as input example, and only real published packages as requirements. It loads with
    ``mlflow.pyfunc.load_model`` where neither retrain nor registry is installed.
    """
    code = directory / "code"
    code.mkdir(parents=True, exist_ok=True)
    bundled = code / f"{SERVABLE_MODULE}.py"
    shutil.copyfile(servable.__file__, bundled)
    artifacts = {"trainer": str(record.model_dir)}
    if record.validated_dir is not None:
        artifacts[VALIDATED_ARTIFACT] = str(record.validated_dir)
    inputs: Path | None = None
    if record.inputs is not None:
        inputs = directory / servable.INPUTS_FILE
        inputs.write_text(json.dumps(servable.inputs_to_json(record.inputs), indent=2))
        artifacts["inputs"] = str(inputs)
    model_path = directory / "model"
    # MLflow runs the model's code while saving it: with the bundled copy, as a load would
    with warnings.catch_warnings(), loading_pyfunc():
        sys.path.insert(0, str(code))
        warnings.filterwarnings("ignore", message=".*type hint.*")
        mlflow.pyfunc.save_model(
            str(model_path),
            python_model=str(MODEL_CODE[record.family]),
            code_paths=[str(bundled)],
            signature=_signature(record, Path(record.model_dir), inputs),
            input_example=None if record.sample is None or record.sample.empty else record.sample,
            artifacts=artifacts,
            pip_requirements=requirements(record.family),
        )
    return model_path


def saved_paths(model_dir: Path) -> tuple[Path, Path | None]:
    """Where a logged model keeps its trainer's saved files and its validated fit's (None:
    it keeps none), from one read of its MLmodel file."""
    artifacts = Model.load(str(model_dir)).flavors["python_function"].get("artifacts", {})
    validated = artifacts.get(VALIDATED_ARTIFACT)
    trainer = model_dir / artifacts["trainer"]["path"]
    return trainer, None if validated is None else model_dir / validated["path"]


def trainer_path(model_dir: Path) -> Path:
    """Where a logged model keeps its trainer's saved files."""
    return saved_paths(model_dir)[0]


def load_trainer(directory: Path) -> Any:
    """The trainer (LightGBM, ALS or a trivial baseline) whose saved files are in
    ``directory``."""
    if (directory / servable.BASELINE_FILE).exists():
        return load_baseline(directory)
    if (directory / "als.json").exists():
        return ALSTrainer.load(directory)
    return LightGBMTrainer.load(directory)


@contextlib.contextmanager
def loading_pyfunc() -> Iterator[None]:
    """Around ``mlflow.pyfunc.load_model`` in this process: each version imports its own
    bundled ``retrain_servable``, and what MLflow adds for a load goes away after it.

    MLflow imports a model-from-code file under a new module name at every load, and puts
    the model's code folder first on ``sys.path``, and never removes either: one module per
    load for the life of the process (a monitor loading its champion every check grew by ~50
    KB per check), and an earlier version's bundled code found first.
    """
    path = list(sys.path)
    sys.modules.pop(SERVABLE_MODULE, None)
    before = set(sys.modules)
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            if name.startswith(CODE_MODULE_PREFIX) or name == SERVABLE_MODULE:
                del sys.modules[name]
        sys.path[:] = path


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
                raise TrackingUnreachable(
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


def _version_info(mv: Any) -> VersionInfo:
    """What retrain reads of an MLflow ``ModelVersion``."""
    return VersionInfo(
        version=str(mv.version),
        run_id=mv.run_id,
        tags=dict(mv.tags or {}),
        aliases=tuple(mv.aliases or ()),
        description=mv.description,
    )


def use_wal_journal(tracking_uri: str) -> None:
    """Keep a local MLflow SQLite database in write-ahead-log mode (a setting of the file).

    MLflow's SQLite store commits every write (a run, a tag, an alias) on its own; in SQLite's
    default rollback-journal mode each commit creates, syncs and deletes a journal file, in WAL
    mode it appends to the log and syncs once: 2.6 times faster per commit here (2.8 ms against
    7.2), with the same durability (``synchronous`` stays FULL: a committed write survives a
    power cut). Readers (``mlflow ui``, ``retrain status``) and the writer no longer block each
    other. A database another process holds open is left in its mode (tried again at the next
    client); a database named by a ``file:`` URI (read only, say) is left alone.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = tracking_uri.removeprefix("sqlite:///")
    if path.startswith("file:") or not Path(path).exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=1)) as conn:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:  # busy or read only: it works as it is, only slower
        logger.debug("MLflow database %s kept its journal mode: %s", path, exc)


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
        # version -> the id of the run that logged it (a version's run never changes)
        self._runs: dict[str, str | None] = {}
        # the registered model was found or created by this object: not read again to register
        # (a read that loads every version of the model)
        self._model_exists = False
        # called before each step of an alias change (see _fault_point): fault injection
        self.fault_hook: Callable[[int, str], None] | None = None

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
            use_wal_journal(self.tracking_uri)
            relocate(self.tracking_uri, self.model_name, self.artifact_root)
            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client

    @property
    def versions_client(self) -> Any:
        """MLflow's model-registry client under :attr:`client`, for writes to versions and
        aliases of this registry's own model.

        ``MlflowClient`` first checks, for each model call, that the name is not an MLflow
        prompt: one more read of the registered model (its aliases, tags and every version's
        row: a cost that grows with the model's history), seven times a retrain for its tags,
        alias and download location. The model is the one this registry creates and manages,
        never a prompt, so its calls go to the registry client directly: the same store, the
        same writes.
        """
        return self.client._get_registry_client()

    def set_version_tags(self, version: str, tags: Mapping[str, str]) -> None:
        """Set tags on a version (MLflow has no batch call for them: one write each)."""
        models = self.versions_client
        for key, value in tags.items():
            models.set_model_version_tag(self.model_name, str(version), str(key), value)

    def run_of(self, version: str) -> str | None:
        """The id of the MLflow run that logged ``version`` (a version's run never changes:
        the versions this registry object registered are not read again)."""
        if str(version) not in self._runs:
            self._runs[str(version)] = self.version(version).run_id
        return self._runs[str(version)]

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
        if self._model_exists:  # read or created by this registry object: it exists
            return
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if not _is_not_found(exc):
                raise
            self.client.create_registered_model(
                self.model_name,
                description="managed by retrain: aliases champion/challenger/previous",
            )
        self._model_exists = True

    # -- reading ------------------------------------------------------------------------------
    @reachable
    def alias_version(self, alias: str) -> str | None:
        info = self.alias_info(alias)
        return None if info is None else info.version

    @reachable
    def alias_info(self, alias: str) -> VersionInfo | None:
        """The version an alias points at, with its tags (one registry read), or None."""
        try:
            mv = self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            if _is_not_found(exc):
                return None
            raise
        self._model_exists = True  # a version of it was found
        return _version_info(mv)

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
        return _version_info(mv)

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

    def _untrusted_fix(self) -> str:
        return (
            "retrain loads models only from its configured registry "
            f"({self.safe_uri()}), with the content it registered: register the model with "
            "retrain (a new retrain run), or move the alias off that version "
            "(`retrain rollback MODEL --to VERSION`) and delete it"
        )

    def _trusted_model_uri(self, version: str, info: VersionInfo | None = None) -> str:
        """Where a version's model lives, if that is inside this registry's own store.

        A version can be registered by hand (MLflow UI, another client) with a ``source``
        anywhere: another server, a shared folder, a bucket, or a path that climbs out of a
        run's artifacts with ``..``. Loading runs the model's code, so only a version whose
        model was logged by a run of this model's experiment, under that run's artifact
        location (normalised and resolved: registry.trust.inside), is loaded.
        """
        run_id = (info or self.version(version)).run_id
        uri = self.versions_client.get_model_version_download_uri(self.model_name, version)
        where = f"version {version} of {self.model_name!r} points at {redact_url(uri)}"
        fix = self._untrusted_fix()
        if not run_id:
            raise UntrustedModel(f"{where}, which no run of this registry logged; {fix}")
        run = self.client.get_run(run_id)
        experiment = self.client.get_experiment_by_name(self.model_name)
        if experiment is None or run.info.experiment_id != experiment.experiment_id:
            raise UntrustedModel(f"{where}, logged by run {run_id} of another experiment; {fix}")
        root = run.info.artifact_uri.rstrip("/")
        if not inside(uri, root):
            raise UntrustedModel(
                f"{where}, outside the artifact store of its run ({redact_url(root)}); {fix}"
            )
        return uri

    def download_trusted(
        self, version: str, destination: str, info: VersionInfo | None = None
    ) -> str:
        """Download a version's model into ``destination`` after both checks: its location is
        inside this registry's store and its files hash to the digest recorded at
        registration. Returns the local model directory. Nothing of it has been imported.
        ``info``: the version as just read from this registry (its run and digest tag), to
        save reading it again."""
        if info is None or info.version != str(version):
            info = self.version(str(version))
        uri = self._trusted_model_uri(str(version), info)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=destination, tracking_uri=self.tracking_uri
        )
        expected = info.tags.get(str(Tag.MODEL_SHA256))
        drop_bytecode(local)
        verify_digest(
            local, expected, f"version {version} of {self.model_name!r}", self._untrusted_fix()
        )
        return str(local)

    @reachable
    def load_model(self, version: str, info: VersionInfo | None = None) -> Any:
        """The fitted trainer of a version, loaded from this registry only.

        Read from the trainer's files inside the model (what ``LightGBMTrainer.save`` /
        ``ALSTrainer.save`` wrote): no model code runs in this process. ``info``: the
        version as just read (:meth:`alias_info`), not read again.
        """
        return self._load(str(version), info, validated=False)[0]

    @reachable
    def load_with_validated(
        self, version: str, info: VersionInfo | None = None
    ) -> tuple[Any, Any | None]:
        """The fitted trainer of a version and, for a refitted version (``gate.refit``), the
        fit its gate validated (None when the version keeps none), from one trusted download.
        ``info``: the version as just read (:meth:`alias_info`), not read again."""
        return self._load(str(version), info, validated=True)

    def _load(
        self, version: str, info: VersionInfo | None, validated: bool
    ) -> tuple[Any, Any | None]:
        with tempfile.TemporaryDirectory(prefix="retrain-model-") as tmp:
            trainer, fit = saved_paths(Path(self.download_trusted(version, tmp, info)))
            served = load_trainer(trainer)
            return served, load_trainer(fit) if validated and fit is not None else None

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
            self._log_evidence(run_id, record.artifacts.values())
            with tempfile.TemporaryDirectory(prefix="retrain-pyfunc-") as tmp:
                model_path = save_servable(record, Path(tmp))
                digest = model_digest(model_path)  # what load_model verifies before loading
                self.client.log_artifacts(run_id, str(model_path), artifact_path="model")
            source = f"{run.info.artifact_uri}/model"
            mv = self.client.create_model_version(
                self.model_name,
                source=source,
                run_id=run_id,
                tags={**record.version_tags, str(Tag.MODEL_SHA256): digest},
                description=record.description,
            )
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        version = str(mv.version)
        self._runs[version] = run_id
        self._move_alias(CHALLENGER, version, actor, "new candidate registered", flow_run_id)
        logger.info("registered %s version %s (run %s)", self.model_name, version, run_id)
        return version

    def _log_evidence(self, run_id: str, paths: Iterable[Path]) -> None:
        """The evidence files under the run's ``evidence/``: a folder that holds exactly the
        listed files in one call (a family writes its evidence into one folder), any other
        file on its own."""
        files = [Path(p) for p in paths]
        by_folder: dict[Path, set[str]] = {}
        for path in files:
            by_folder.setdefault(path.parent, set()).add(path.name)
        for folder, names in by_folder.items():
            if {p.name for p in folder.iterdir()} == names and all(
                (folder / n).is_file() for n in names
            ):
                self.client.log_artifacts(run_id, str(folder), artifact_path="evidence")
            else:
                for name in sorted(names):
                    self.client.log_artifact(run_id, str(folder / name), artifact_path="evidence")

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
        # a tag that already says what the decision says is not written again (the gate's, set
        # at registration, unless infra validation failed the version after it)
        self.set_version_tags(
            decision.version,
            {str(k): v for k, v in tags.items() if earlier.get(str(k)) != v},
        )

    # -- alias changes: one intent in the ledger, the moves in MLflow, then done + audit ------
    def _fault_point(self, step: int, what: str) -> None:
        """Called before each step of an alias change (0: writing the intent, 1..n: the moves,
        n + 1: marking it done); tests inject faults here (raise, SIGKILL)."""
        if self.fault_hook is not None:
            self.fault_hook(step, what)

    def _set_alias(self, alias: str, version: str | None) -> None:
        if version is None:
            try:
                self.versions_client.delete_registered_model_alias(self.model_name, alias)
            except MlflowException as exc:
                if not _is_not_found(exc):
                    raise
        else:
            self.versions_client.set_registered_model_alias(self.model_name, alias, version)

    def _change_aliases(
        self,
        targets: Sequence[tuple[str, str | None, str]],
        actor: str,
        flow_run_id: str | None,
    ) -> tuple[AliasMove, ...]:
        """Move aliases as ONE audited change: (alias, to version or None, reason) each.

        1. any interrupted earlier change is recovered first (:meth:`recover_alias_changes`);
        2. the intent (every move, from and to) is written to the ledger, alone in its
           transaction: a ledger that is down or read only stops here, nothing moved;
        3. the aliases move in MLflow;
        4. the intent is marked done and its audit rows written, in one ledger transaction.
        A failure or a kill after 2 leaves a pending intent that the next recovery reverts.
        """
        self.recover_alias_changes()
        current = self.aliases()
        moves = tuple(
            AliasMove(alias, current.get(alias), to, reason)
            for alias, to, reason in targets
            if current.get(alias) != to
        )
        if not moves:
            return ()
        self._fault_point(0, "write the intent")
        intent = self.ledger.begin_alias_change(self.model_name, moves, actor, flow_run_id)
        try:
            for step, move in enumerate(moves, start=1):
                self._fault_point(step, f"move {move.alias} to {move.to_version}")
                self._set_alias(move.alias, move.to_version)
            self._fault_point(len(moves) + 1, "mark the intent done")
            self.ledger.finish_alias_change(intent)
        except (MlflowException, LedgerError, sa_exc.SQLAlchemyError) as exc:
            raise RegistryError(
                f"the alias change of {self.model_name} ({_describe(moves)}) stopped halfway: "
                f"{_short(exc)}. It is pending in the ledger (alias change {intent}): the next "
                "retrain, `retrain status` or `retrain rollback` reverts it once the registry "
                "and the ledger answer; nothing was audited"
            ) from None
        return moves

    def _abandoned(self, intent: AliasIntent) -> bool:
        if intent.owner == process_owner() or owner_is_dead(intent.owner):
            return True
        return now() - intent.created_at > ALIAS_CHANGE_STALE

    @reachable
    def recover_alias_changes(self) -> list[str]:
        """Revert every interrupted alias change of this model; what was done, one line each.

        An interrupted change is reverted, never completed: the run or command that started
        it failed (and said so), so its aliases go back to where they were. The moves that
        had reached MLflow are audited (the move, then the revert), so the audit still
        replays to the registry's aliases. A change still in progress in another live process
        (younger than ALIAS_CHANGE_STALE) is an error: wait and retry.
        """
        done: list[str] = []
        for intent in self.ledger.pending_alias_changes(self.model_name):
            if not self._abandoned(intent):
                raise RegistryError(
                    f"an alias change of {self.model_name} is in progress in process "
                    f"{intent.owner} since {intent.created_at:%Y-%m-%d %H:%M:%S} UTC (ledger "
                    f"alias change {intent.id}): wait for it to end, then retry"
                )
            current = self.aliases()
            audit: list[AliasMove] = []
            back: list[str] = []
            why = f"reverted: alias change {intent.id} by {intent.actor} was interrupted"
            for move in intent.moves:
                now_at = current.get(move.alias)
                if now_at == move.from_version:
                    continue  # this move never reached MLflow
                if now_at == move.to_version:
                    audit.append(replace(move, reason=f"{move.reason} (interrupted)"))
                audit.append(AliasMove(move.alias, now_at, move.from_version, why))
                self._set_alias(move.alias, move.from_version)
                back.append(f"{move.alias} back to {move.from_version or '(none)'}")
            summary = ", ".join(back) if back else "nothing had moved yet"
            note = f"{why}; {summary}"
            if self.ledger.finish_alias_change(intent.id, "reverted", note, audit):
                logger.warning("%s: %s", self.model_name, note)
                done.append(note)
        return done

    @reachable
    def alias_drift(self) -> tuple[AliasDrift, ...]:
        """Aliases that are not where retrain's audit last put them (moved outside retrain).
        Call :meth:`recover_alias_changes` first: a pending change differs on purpose."""
        return alias_drift(self.aliases(), self.ledger.audited_aliases(self.model_name))

    @reachable
    def revert_drift(
        self, drift: Sequence[AliasDrift], actor: str, flow_run_id: str | None = None
    ) -> tuple[AliasMove, ...]:
        """Move aliases moved outside retrain back where the audit says, as one audited
        change (a champion goes back to the last version retrain promoted)."""
        return self._change_aliases(
            [
                (
                    d.alias,
                    d.audited_version,
                    f"reverted: moved outside retrain to {d.registry_version or '(unset)'}",
                )
                for d in drift
            ],
            actor,
            flow_run_id,
        )

    def _move_alias(
        self, alias: str, version: str, actor: str, reason: str, flow_run_id: str | None
    ) -> None:
        self._change_aliases([(alias, version, reason)], actor, flow_run_id)

    def _delete_alias(self, alias: str, actor: str, reason: str, flow_run_id: str | None) -> None:
        self._change_aliases([(alias, None, reason)], actor, flow_run_id)

    def _earned_previous(self, replaced: str, new_champion_tags: Mapping[str, str]) -> bool:
        """Whether a replaced champion becomes ``previous``: only if it passed the gate and
        was approved (not a version moved into ``champion`` outside retrain) and is not the
        same model as the new champion (then ``previous`` keeps the last different one)."""
        tags = self.version(replaced).tags
        legit = tags.get(GATE_TAG) == "passed" and tags.get(APPROVAL_TAG) == "approved"
        return legit and not same_training(tags, new_champion_tags)

    def _require_promotable(self, version: str) -> dict[str, str]:
        tags = self.version(version).tags
        if tags.get(GATE_TAG) != "passed" or tags.get(APPROVAL_TAG) != "approved":
            raise PromotionRefused(
                f"version {version} of {self.model_name} is tagged gate={tags.get(GATE_TAG)!r}, "
                f"approval={tags.get(APPROVAL_TAG)!r}: only a version that passed the backtest "
                "gate and was approved can become champion (call record_decision first)"
            )
        return tags

    @reachable
    def promote(
        self, decision: PromotionDecision, actor: str, flow_run_id: str | None = None
    ) -> str | None:
        """Move ``champion`` to the decided version; the old champion becomes ``previous``
        (unless it is the same model: trained on the same data with the same spec, then
        ``previous`` keeps the last different champion). One audited alias change.

        Refuses (PromotionRefused) unless the decision says promote AND the version's own tags
        in the registry say the gate passed and the promotion was approved.
        """
        version = decision.version
        if not decision.promote:
            raise PromotionRefused(
                f"version {version} was not promoted: {decision.reason}; the champion stays"
            )
        tags = self._require_promotable(version)
        self.recover_alias_changes()
        aliases = self.aliases()
        old = aliases.get(CHAMPION)
        if old == version:
            return old
        targets: list[tuple[str, str | None, str]] = [(CHAMPION, version, decision.reason)]
        if old is not None and self._earned_previous(old, tags):
            targets.append((PREVIOUS, old, f"replaced by version {version}"))
        if aliases.get(CHALLENGER) == version:
            targets.append((CHALLENGER, None, f"version {version} promoted"))
        self._change_aliases(targets, actor, flow_run_id)
        logger.info("%s: champion %s -> %s", self.model_name, old, version)
        return old

    @reachable
    def rollback(
        self,
        actor: str,
        reason: str,
        flow_run_id: str | None = None,
        to: str | None = None,
    ) -> tuple[str, str]:
        """Move ``champion`` back to ``previous`` (or to version ``to``, any earlier version
        that passed the gate and was approved); the replaced champion becomes ``previous``.
        One audited alias change; returns (from, to)."""
        self.recover_alias_changes()
        aliases = self.aliases()
        current = aliases.get(CHAMPION)
        if current is None:
            raise RegistryError(
                f"{self.model_name} has no champion version: there is nothing to roll back to"
            )
        target = aliases.get(PREVIOUS) if to is None else str(to)
        if target is None:
            raise RegistryError(
                f"{self.model_name} has no previous version: there is nothing to roll back to "
                "(name one with `retrain rollback MODEL --to VERSION`)"
            )
        if target == current:
            raise RegistryError(
                f"version {target} of {self.model_name} is already the champion: nothing to do"
            )
        try:
            target_tags = self._require_promotable(target)
        except PromotionRefused as exc:
            raise PromotionRefused(f"cannot roll back to it: {exc}") from None
        targets: list[tuple[str, str | None, str]] = [(CHAMPION, target, f"rollback: {reason}")]
        if self._earned_previous(current, target_tags):
            targets.append((PREVIOUS, current, f"rolled back from {current}"))
        self._change_aliases(targets, actor, flow_run_id)
        return current, target


def _describe(moves: Sequence[AliasMove]) -> str:
    return ", ".join(f"{m.alias} {m.from_version} -> {m.to_version}" for m in moves)


def _short(exc: BaseException) -> str:
    text = str(exc)
    if any(marker in text for marker in UNREACHABLE):
        return "the MLflow tracking server does not answer"
    return redact_url(text.splitlines()[0] if text else type(exc).__name__)[:300]
