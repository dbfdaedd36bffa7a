"""The shared spine of every family's retrain: prepare, windows, the champion, what comes out.

prepare (ingest + feature cache + windows) -> the family's fit -> the family's evaluate. Every
family (``retrain.families.lightgbm``, ``retrain.families.als``, ...) takes and returns these
types, so the flows and the simulator call any family the same way. Nothing here knows about
Prefect or MLflow: the champion is handed in as a fitted trainer, and what comes out is data and
frozen decisions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.backtest import BacktestResult
from retrain.config import ModelSpec, label_text
from retrain.errors import BacktestError, DataError, EmptyWindowError, SchemaError
from retrain.families.lineage import Lineage, Tag
from retrain.features import (
    FeatureCache,
    MaterializeResult,
    Window,
    data_version,
    make_window,
    plan_windows,
)
from retrain.ingest import (
    IngestResult,
    ingest,
    parse_timestamps,
    read_source,
    source_stat_key,
)
from retrain.ledger import Ledger
from retrain.stateful import STATEFUL_MODES, ChampionState, TrainingPlan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """The data side of a retrain: what was ingested, cached, and the two windows."""

    ingest: IngestResult
    cache: MaterializeResult
    train: Window
    holdout: Window
    spec_hash: str


@dataclass(frozen=True)
class Champion:
    """The model in production, as loaded from the registry."""

    version: str
    model: Any
    train_end: pd.Timestamp | None
    data_versions: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)
    # gate.refit: the fit the gate validated before this version was refitted and served
    # (None: the served fit is the validated one, or it was not kept); it trained up to
    # ``validated_end``, the start of this version's own holdout
    validated: Any = field(default=None, repr=False)
    validated_end: pd.Timestamp | None = None

    @classmethod
    def registered(
        cls, version: str, model: Any, tags: Mapping[str, str], validated: Any = None
    ) -> Champion:
        """The champion as the registry holds it: its training end and lineage from its tags
        (and its validated fit, ``validated``, when the version keeps one)."""
        lineage = Lineage(tags)
        validated_end = lineage.validated_window_end if validated is not None else None
        return cls(
            version,
            model,
            lineage.window_end,
            lineage.data_versions,
            dict(tags),
            validated if validated_end is not None else None,
            validated_end,
        )

    @property
    def lineage(self) -> Lineage:
        return Lineage(self.tags)

    def state(self) -> ChampionState:
        return ChampionState(
            version=self.version,
            increments=int(getattr(self.model, "increments_", 0)),
            train_end=self.train_end,
            feature_names=tuple(getattr(self.model, "feature_names_", ())),
            categorical=tuple(getattr(self.model, "categories_", ())),
            classes=tuple(label_text(c) for c in getattr(self.model, "classes_", ())),
            baseline=bool(getattr(self.model, "is_baseline", False)),
        )


@dataclass(frozen=True)
class Trained:
    model: Any  # the family's trainer (retrain.families.lightgbm, .als, ...)
    window: Window
    rows: int
    label_stats: dict[str, float]
    plan: TrainingPlan
    # every data version the model's weights have seen: the lineage's, then this window's
    data_versions: tuple[str, ...]
    y_train: np.ndarray = field(repr=False)
    # the timestamp of the last training row (the tag retrain.data_end; data age counts from it)
    data_end: pd.Timestamp | None = None
    # the rows of ``window`` as the fit read them (the family's own table), when it read that
    # whole window: the gate uses them instead of reading the window again (None: it reads)
    rows_read: pd.DataFrame | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Evaluated:
    result: BacktestResult
    timestamps: pd.Series = field(repr=False)
    y: np.ndarray = field(repr=False)
    candidate: np.ndarray = field(repr=False)
    baseline: np.ndarray = field(repr=False)
    champion: np.ndarray | None = field(repr=False, default=None)
    # the gate's verdict on the baseline as a candidate (gate.promote_baseline, when the
    # candidate lost to it: retrain.families.baseline.baseline_verdict); None otherwise
    baseline_result: BacktestResult | None = None
    # the champion is itself a trivial baseline: the fresh one may refresh it
    baseline_refresh: bool = False
    # which fit of the champion the gate judged against, on which rows (champion_comparison)
    comparison: Comparison | None = None


@dataclass(frozen=True)
class Scored:
    """One model scored on rows it never saw (a partition of a replay): how many rows (or
    users) counted, the metric over them, and what a family needs to pool several of them."""

    rows: int
    value: float
    y: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    pred: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))


def parse_as_of(value: str | pd.Timestamp | None) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(
            f"--as-of {value!r} is not a date or timestamp; write it like 2011-06-01"
        ) from None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def prepare(
    spec: ModelSpec, as_of: pd.Timestamp | None = None, ledger: Ledger | None = None
) -> Prepared:
    """Ingest the source, record the manifest, fill the feature cache, plan the windows."""
    result = ingest(spec, as_of=as_of)
    if ledger is not None:
        rows: list[tuple[str, str, int, str, str | None]] = [
            (p.key, p.fingerprint, p.rows, "ok", p.note) for p in result.partitions
        ]
        rows += [(q.key, "-", q.rows, "quarantined", q.reason) for q in result.quarantined]
        ledger.record_partitions(spec.name, rows)
    train, holdout = plan_windows(result.partitions, spec, as_of, result.quarantined)
    cache = FeatureCache(spec.state.features, spec)
    materialized = cache.materialize(train.partitions + holdout.partitions)
    return Prepared(result, materialized, train, holdout, cache.spec_hash)


def align_to_champion(
    prepared: Prepared, mode: str, champion: Champion | None, refitted: bool
) -> Prepared:
    """The windows of an incremental retrain (stateful, continual) against its champion.

    A warm, refit or fold-in candidate learns from the partitions after the champion's training
    end and is judged on a holdout after them, so both need at least one partition. When the
    champion trained up to (or near) the planned holdout's start (``gate.refit`` registers fits
    that end at their as-of), the increment would be empty and the lineage could never advance:
    then the holdout starts at the end of the first complete partition after the champion's
    training end instead, and that partition is the increment. The holdout is empty when no
    partition follows it (``skip_reason`` then skips: nothing to judge on yet). Other modes and
    a first model keep the planned windows, and so does a champion that is not a refit
    (``refitted`` is ``gate.refit``): it trained up to its own holdout's start, so a champion
    trained past the planned holdout's start means no new data, and the run is skipped.

    >>> from retrain.ingest import Partition
    >>> def part(m):
    ...     start = pd.Timestamp(f"2011-{m:02d}-01")
    ...     return Partition(f"p{m}", start, start + pd.offsets.MonthBegin(), "fp", pd.DataFrame())
    >>> parts = [part(m) for m in range(1, 8)]
    >>> holdout = Window("holdout", pd.Timestamp("2011-04-15"), pd.Timestamp("2011-08-01"),
    ...                  tuple(parts[4:]), "dv")
    >>> prepared = Prepared(IngestResult(tuple(parts), (), 0, 0), None, None, holdout, "h")
    >>> champ = Champion("3", None, pd.Timestamp("2011-04-10"), ())
    >>> aligned = align_to_champion(prepared, "stateful", champ, True).holdout
    >>> str(aligned.start.date()), [p.key for p in aligned.partitions]
    ('2011-05-01', ['p5', 'p6', 'p7'])
    >>> align_to_champion(prepared, "manual", champ, True).holdout is holdout
    True
    >>> align_to_champion(prepared, "stateful", champ, False).holdout is holdout
    True
    """
    if not refitted or mode not in STATEFUL_MODES or champion is None:
        return prepared
    if getattr(champion.model, "is_baseline", False):
        return prepared  # a baseline champion: the run is a scratch run, no increment
    if champion.train_end is None:
        return prepared
    since = champion.train_end
    holdout = prepared.holdout
    start = min((p.end for p in prepared.ingest.partitions if p.end > since), default=None)
    if start is None or start <= holdout.start:
        return prepared
    inside = tuple(p for p in holdout.partitions if p.start >= start)
    moved = replace(
        holdout, start=start, partitions=inside, version=data_version(prepared.spec_hash, inside)
    )
    logger.info(
        "holdout moved to start at %s: champion v%s trained up to %s, and its increment "
        "needs one complete partition before the holdout",
        start,
        champion.version,
        since,
    )
    return replace(prepared, holdout=moved)


def increment_window(spec: ModelSpec, prepared: Prepared, since: pd.Timestamp) -> Window:
    """The partitions the champion was not trained on, up to the holdout.

    The champion's window held only the partitions that END at or before ``since`` (its
    training end): a partition straddling ``since`` (a holdout that started inside it) was left
    out whole, so it belongs to the increment, whole; otherwise no retrain of the lineage would
    ever read it.
    """
    if since >= prepared.holdout.start:
        raise EmptyWindowError(
            f"no new data since the champion's training end ({since}): the holdout starts at "
            f"{prepared.holdout.start}. Nothing to warm-start on; wait for new partitions."
        )
    end = prepared.holdout.start
    inside = tuple(p for p in prepared.ingest.partitions if since < p.end <= end)
    if not inside:
        raise EmptyWindowError(
            f"no complete partition arrived between the champion's training end ({since}) and "
            f"the holdout's start ({end}). Nothing to warm-start on; wait for new partitions "
            "or move --as-of."
        )
    window = Window(
        "increment",
        min(since, inside[0].start),
        end,
        inside,
        data_version(prepared.spec_hash, inside),
    )
    FeatureCache(spec.state.features, spec).materialize(window.partitions)
    return window


def with_replay(
    spec: ModelSpec, prepared: Prepared, increment: Window, since: pd.Timestamp, rows: int
) -> Window:
    """``increment`` with the newest partitions the champion trained on (ending at or before
    ``since``, its training end, and inside the training window) put in front of it, newest
    first, until they hold at least ``rows`` rows (fewer when the training window has no more).

    A warm increment's trees then learn from the champion's newest rows too
    (``stateful.replay``): their residuals are small, so a few new rows cannot pull the new
    trees far from what the champion already knows. The window (its start, its partitions, its
    data version) holds the replayed partitions: a version records every partition it read.
    """
    if rows <= 0:
        return increment
    earlier = [
        p
        for p in prepared.ingest.partitions
        if p.end <= since and p.start >= prepared.train.start and p not in increment.partitions
    ]
    replayed: list[Any] = []
    got = 0
    for part in reversed(earlier):
        if got >= rows:
            break
        replayed.insert(0, part)
        got += part.rows
    if not replayed:
        return increment
    inside = (*replayed, *increment.partitions)
    window = Window(
        increment.name,
        min(increment.start, replayed[0].start),
        increment.end,
        inside,
        data_version(prepared.spec_hash, inside),
    )
    # nothing to materialize: the replayed partitions are the training window's and the
    # increment's are cached by increment_window, both before this
    return window


def split_windows(
    holdout: Window, k: int, timestamps: pd.Series
) -> tuple[list[tuple[pd.Timestamp, pd.Timestamp]], np.ndarray]:
    """K consecutive windows of equal length over the holdout, and each row's window index."""
    span = (holdout.end - holdout.start) / k
    bounds = [(holdout.start + i * span, holdout.start + (i + 1) * span) for i in range(k)]
    offsets = (pd.to_datetime(timestamps) - holdout.start) / span
    ids = np.clip(np.floor(offsets.to_numpy(dtype="float64")).astype(int), 0, k - 1)
    return bounds, ids


def evidence_tables(
    directory: Path, spec: ModelSpec, prepared: Prepared, result: BacktestResult
) -> dict[str, Path]:
    """What every version's evidence holds, in ``directory``: seeded samples of the source's
    rows of both windows (``train_sample.csv``, ``holdout_sample.csv``) and the backtest's
    tables (``backtest.csv``, ``backtest_windows.csv``). A family adds its plots and report."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, window in (("train_sample", prepared.train), ("holdout_sample", prepared.holdout)):
        source_rows(spec, window).to_csv(directory / f"{name}.csv", index=False)
        out[name] = directory / f"{name}.csv"
    pd.DataFrame(result.table()).to_csv(directory / "backtest.csv", index=False)
    out["backtest_table"] = directory / "backtest.csv"
    pd.DataFrame(result.window_table()).to_csv(directory / "backtest_windows.csv", index=False)
    out["backtest_windows"] = directory / "backtest_windows.csv"
    return out


def source_rows(spec: ModelSpec, window: Window, n: int = 50) -> pd.DataFrame:
    """A small, seeded sample of the source's own rows whose event time lies in ``window``.

    Every column of the source with the source's own types (as ``pd.read_csv`` of the file,
    or the SQL table, gives them): what a served model takes. The run's evidence samples and
    the model's input example are such rows, so they score as they are.
    """
    raw, ts = _source_with_times(spec)
    inside = raw[((ts >= window.start) & (ts < window.end)).to_numpy()]
    picked = inside.sample(min(n, len(inside)), random_state=spec.seed)
    order = ts.loc[picked.index].sort_values(kind="stable").index
    return picked.loc[order].reset_index(drop=True)


# the last file source read whole for samples, keyed by its files' stat (see
# retrain.ingest.source_stat_key) and how it is read and its event times parse: a run takes
# three samples (the evidence's train and holdout rows, the model's input example) and read
# the source for each; a sweep's models that share a source read it once. One source only:
# the frame is the whole source, held until another source is sampled.
_SAMPLED: list[tuple[tuple[Any, ...], tuple[pd.DataFrame, pd.Series]]] = []
_SAMPLED_LOCK = threading.Lock()


def _source_with_times(spec: ModelSpec) -> tuple[pd.DataFrame, pd.Series]:
    """The source's rows (read_source) and their event times; a file source whose files'
    paths, sizes and modification times are unchanged since its last read is not read again
    (a SQL source always is). Callers select from the frame, never change it."""
    stat = source_stat_key(spec.source)
    if stat is None:
        raw = read_source(spec.source)
        return raw, _event_times(raw, spec)
    key = (stat, spec.source.model_dump_json(), spec.timestamp.model_dump_json())
    with _SAMPLED_LOCK:
        if _SAMPLED and _SAMPLED[0][0] == key:
            return _SAMPLED[0][1]
    raw = read_source(spec.source)
    read = (raw, _event_times(raw, spec))
    with _SAMPLED_LOCK:
        _SAMPLED[:] = [(key, read)]
    return read


def _event_times(raw: pd.DataFrame, spec: ModelSpec) -> pd.Series:
    """Event times of the source's rows; NaT for a row whose timestamp does not parse (ingest
    quarantines those; a sample just leaves them out)."""
    try:
        return parse_timestamps(raw, spec)
    except SchemaError:
        pass
    col, hours = spec.timestamp.column, spec.timestamp.hours_from
    fmt = spec.timestamp.format
    values = raw[col]
    if fmt in {"s", "ms"} and pd.api.types.is_numeric_dtype(values):
        parsed = pd.to_datetime(values, unit=fmt, errors="coerce")
    elif pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        parsed = pd.to_datetime(values, format=fmt, errors="coerce")
    good = parsed.notna()
    if hours:
        good &= pd.to_numeric(raw[hours], errors="coerce").notna()
    ts = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    if good.any():
        try:
            ts[good] = parse_timestamps(raw[good], spec)
        except SchemaError:
            logger.warning("no timestamp of the source parses: the row samples are empty")
    return ts


def serving_prepared(spec: ModelSpec, prepared: Prepared) -> Prepared:
    """The data side of the served fit (``gate.refit``): the training window ends at the as-of
    (the holdout's end) instead of the holdout's start, and the holdout is empty, so a scratch
    fit reads ``[as_of - windows.train, as_of)`` and an increment (warm, refit, fold-in) runs
    from the champion's training end through the holdout's partitions."""
    end = prepared.holdout.end
    train = make_window(
        "train",
        end - spec.windows.train_delta,
        end,
        prepared.ingest.partitions,
        prepared.spec_hash,
    )
    FeatureCache(spec.state.features, spec).materialize(train.partitions)
    holdout = Window("holdout", end, end, (), data_version(prepared.spec_hash, ()))
    return replace(prepared, train=train, holdout=holdout)


@dataclass(frozen=True)
class Comparison:
    """What the gate compares the candidate with: which fit of the champion, on which part of
    the holdout. ``fit``: ``served`` (the champion's registered model), ``validated`` (its
    validated fit: equal staleness) or ``none`` (no champion). ``model`` is what scores the
    holdout (None without a champion); ``train_end`` its training end, at or before
    ``holdout.start`` (no model is judged on rows it trained on). ``note``: why, for the
    verdict's reasons; ``tags``: the same for the version's tags."""

    holdout: Window
    fit: str
    model: Any = field(default=None, repr=False)
    train_end: pd.Timestamp | None = None
    note: str | None = None

    @property
    def tags(self) -> dict[str, str]:
        """The version's record of the champion counterpart the gate judged against."""
        out = {str(Tag.GATE_CHAMPION_FIT): self.fit}
        if self.fit != "none":
            out[str(Tag.GATE_CHAMPION_TRAIN_END)] = str(self.train_end)
            out[str(Tag.GATE_JUDGED_START)] = str(self.holdout.start)
            out[str(Tag.GATE_JUDGED_END)] = str(self.holdout.end)
        return out


def champion_comparison(
    holdout: Window, champion: Champion | None, refitted: bool, equal_staleness: bool
) -> Comparison:
    """The one rule (flows and simulator, both families) for what the candidate's validated
    fit, trained before ``holdout.start``, is judged against.

    - No champion: the baseline only.
    - A champion that trained up to the holdout's start at most: the served champion, on the
      whole holdout.
    - A refitted champion (``gate.refit``) that trained inside the holdout, with
      ``equal_staleness`` (``gate.equal_staleness``) and its validated fit kept: that
      validated fit, on the whole holdout. It trained before its own holdout, hence before
      this one; the candidate's validated fit too. Both are ``windows.holdout`` older than
      the fits that serve, so the gate compares the two recipes at equal staleness, and the
      gap between their training ends is the gap between the served fits.
    - Otherwise the served champion on the rows after its training end
      (:func:`judged_holdout`: a shorter slice, and a champion fresher than the candidate).
    """
    if champion is None:
        return Comparison(holdout, "none")
    trained_inside = champion.train_end is not None and champion.train_end > holdout.start
    if (
        trained_inside
        and refitted
        and equal_staleness
        and champion.validated is not None
        and champion.validated_end is not None
        and champion.validated_end <= holdout.start
    ):
        note = (
            f"judged against champion v{champion.version}'s validated fit (trained to "
            f"{champion.validated_end}, before the holdout; its served refit trained to "
            f"{champion.train_end}): both fits at equal staleness, on the whole holdout "
            "(gate.equal_staleness)"
        )
        return Comparison(holdout, "validated", champion.validated, champion.validated_end, note)
    judged, tail = judged_holdout(holdout, champion, refitted)
    return Comparison(judged, "served", champion.model, champion.train_end, tail)


def judged_holdout(
    holdout: Window, champion: Champion | None, refitted: bool
) -> tuple[Window, str | None]:
    """The part of the holdout the gate may judge the champion on: all of it, unless the
    champion (a refitted fit, ``gate.refit``) trained past its start; then only the rows
    after the champion's training end, which neither model has seen. The note says why."""
    if champion is None or champion.train_end is None or champion.train_end <= holdout.start:
        return holdout, None
    if not refitted:
        return holdout, None  # backtest() refuses the unfair comparison with its message
    if champion.train_end >= holdout.end:
        raise BacktestError(
            f"champion v{champion.version} trained on data up to {champion.train_end}, past "
            f"the whole holdout ({holdout.start} to {holdout.end}): no row is unseen by both "
            "models. Retrain with a later --as-of, once new partitions arrived."
        )
    note = (
        f"judged on {champion.train_end} to {holdout.end}: the part of the holdout after "
        f"champion v{champion.version}'s training end, unseen by both models"
    )
    return replace(holdout, start=champion.train_end), note


def same_recipe(trained: Trained, comparison: Comparison, champion: Champion | None) -> bool:
    """Whether the candidate is a refit of the champion's own recipe with only the data moved
    (``gate.undecided``): both from scratch, with the same parameters (the trainers'
    ``non_default_params``: family, task, boosting rounds, seed, strategy, ...), the same
    features in the same order and a training window of the same length. The counterpart is
    the champion's fit the gate judges (``comparison.model``: its validated fit or the served
    one). A trivial baseline champion, an increment (warm, refit, fold-in) or a champion whose
    window is unknown is not the same recipe.

    >>> class M:
    ...     def __init__(self, rounds): self.rounds, self.feature_names_ = rounds, ["a"]
    ...     def non_default_params(self): return {"num_boost_round": self.rounds}
    >>> day = pd.Timedelta(days=1)
    >>> w = Window("train", pd.Timestamp("2024-01-02"), pd.Timestamp("2024-03-02"), (), "v")
    >>> cand = Trained(M(50), w, 1, {}, TrainingPlan("scratch", "", None, 0), (), np.empty(0))
    >>> tags = {"retrain.window_start": "2024-01-01", "retrain.window_end": "2024-03-01"}
    >>> champ = Champion("3", M(50), pd.Timestamp("2024-03-01"), (), tags)
    >>> same_recipe(cand, Comparison(w, "served", champ.model), champ)
    True
    >>> same_recipe(cand, Comparison(w, "served", M(200)), champ)
    False
    """
    versus = comparison.model
    if champion is None or versus is None or trained.plan.strategy != "scratch":
        return False
    if getattr(versus, "is_baseline", False) or getattr(trained.model, "is_baseline", False):
        return False
    lineage = champion.lineage
    start, end = lineage.window_start, lineage.window_end
    if start is None or end is None:
        return False
    if end - start != trained.window.end - trained.window.start:
        return False
    params = [getattr(m, "non_default_params", None) for m in (trained.model, versus)]
    if params[0] is None or params[1] is None or params[0]() != params[1]():
        return False
    features = [getattr(m, "feature_names_", None) for m in (trained.model, versus)]
    return bool(features[0] == features[1])


def shift_served(trained: Trained, comparison: Comparison, champion: Champion | None) -> bool:
    """Whether the champion's served refit already learned the change of data that the gate
    judges (``gate.undecided``): the gate compares the candidate's validated fit with the
    champion's *validated* fit (``comparison.fit == "validated"``), and the champion's served
    window holds every row the candidate's window added over that validated fit and none of
    the rows it dropped. With windows of one length ``[a, b)``: the served window ``[a3, b3)``
    starts no earlier than the candidate's ``[a2, b2)`` and no later than ``max(a2, b1)``
    (``b1`` the validated fit's end), and ends no earlier than ``b2``. A refusal of such a
    candidate would keep serving the very data change that the holdout judged.

    >>> day = pd.Timedelta(days=1)
    >>> t = pd.Timestamp("2024-03-01")
    >>> w = Window("train", t - 90 * day, t, (), "v")  # the candidate's validated window
    >>> tags = {"retrain.window_start": str(t + 7 * day - 90 * day),
    ...         "retrain.window_end": str(t + 7 * day)}  # the champion's served refit
    >>> champ = Champion("3", None, t + 7 * day, (), tags, object(), t - 7 * day)
    >>> cand = Trained(None, w, 1, {}, TrainingPlan("scratch", "", None, 0), (), np.empty(0))
    >>> shift_served(cand, Comparison(w, "validated", champ.validated, t - 7 * day), champ)
    True
    >>> shift_served(cand, Comparison(w, "served", None, t - 7 * day), champ)
    False
    """
    if champion is None or comparison.fit != "validated" or comparison.train_end is None:
        return False
    start, end = champion.lineage.window_start, champion.lineage.window_end
    if start is None or end is None:
        return False
    a2, b2 = trained.window.start, trained.window.end
    return bool(a2 <= start <= max(a2, comparison.train_end) and end >= b2)


def interleaved_partitions(window: Window, holdout: pd.Timedelta) -> tuple[int, np.ndarray] | None:
    """The partitions of ``window`` that the interleaved fold holds out (``gate.undecided``):
    every k-th, counted back from the newest, with ``k = ceil(n / m)`` for ``n`` partitions
    of which ``m`` (at least 1) start in the window's newest ``holdout``, and ``k`` at least
    2. So at most ``m`` partitions are held out, as many as the forward fold holds out when
    ``holdout`` divides the window evenly, spread over the whole window. Returns ``k`` and one
    flag per partition (None for a window of fewer than two partitions).

    >>> from retrain.ingest import Partition
    >>> day, t = pd.Timedelta(days=1), pd.Timestamp("2024-01-01")
    >>> def part(i):
    ...     return Partition(f"{i}", t + i * day, t + (i + 1) * day, "f", pd.DataFrame())
    >>> parts = tuple(part(i) for i in range(10))
    >>> every, held = interleaved_partitions(Window("train", t, t + 10 * day, parts, "v"), 3 * day)
    >>> every, held.nonzero()[0].tolist()
    (4, [1, 5, 9])
    """
    n = len(window.partitions)
    if n < 2:
        return None
    cut = window.end - holdout
    m = max(1, sum(1 for p in window.partitions if p.start >= cut))
    every = max(2, -(-n // m))
    held = ((n - 1 - np.arange(n)) % every) == 0
    return every, held


def partition_ids(window: Window, timestamps: pd.Series) -> np.ndarray:
    """Each row's partition in ``window`` (its index among the partitions that start at or
    before the row): the blocks of the gate's partition bootstrap."""
    starts = np.array([p.start for p in window.partitions], dtype="datetime64[ns]")
    times = pd.to_datetime(timestamps).to_numpy(dtype="datetime64[ns]")
    return np.searchsorted(starts, times, side="right")
