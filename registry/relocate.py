"""A state directory that moved keeps working, and a copied one never writes into the original.

MLflow's SQLite store keeps absolute artifact locations (``file:///old/dir/mlartifacts/...``)
in the experiment, its runs, its model versions and its logged models. After ``mv state new``
every load would look in the old place (gone); after ``cp -r state copy`` the copy would read
and WRITE the original's artifacts. When the registry opens a local SQLite store whose model
experiment points at a local artifact root other than the spec's, it rewrites that prefix, for
this one model's rows only, in one transaction, and logs what it did. Remote stores (a tracking
server, object storage) have no local paths and are left alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa

logger = logging.getLogger(__name__)

# (table, column, how its rows belong to the model): every place MLflow 3 stores a location
COLUMNS = (
    ("runs", "artifact_uri", "experiment_id = :experiment_id"),
    ("model_versions", "source", "name = :model"),
    ("model_versions", "storage_location", "name = :model"),
    ("logged_models", "artifact_location", "experiment_id = :experiment_id"),
)


def _columns(conn: sa.Connection) -> set[tuple[str, str]]:
    found = set()
    for table in {t for t, _, _ in COLUMNS} | {"experiments"}:
        for row in conn.execute(sa.text(f"PRAGMA table_info({table})")):
            found.add((table, str(row[1])))
    return found


def relocate(tracking_uri: str, model_name: str, artifact_root: Path | str | None) -> int:
    """Point the model's stored artifact locations at ``artifact_root``; rows rewritten.

    Does nothing unless the store is a SQLite file in the same state directory as the local
    ``artifact_root`` (``<dir>/mlflow.db`` beside ``<dir>/mlartifacts``), and the model's
    experiment points at a folder of the same name in another directory: the state moved or
    was copied with its store.
    """
    if not tracking_uri.startswith("sqlite:///") or artifact_root is None:
        return 0
    if isinstance(artifact_root, str) and "://" in artifact_root:
        return 0
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    root = Path(artifact_root).resolve()
    if not path.exists() or path.resolve().parent != root.parent:
        return 0  # the store is not the state dir's own (it did not move with it)
    new = root.as_uri()
    engine = sa.create_engine(tracking_uri)
    try:
        with engine.begin() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT experiment_id, artifact_location FROM experiments WHERE name = :name"
                ),
                {"name": model_name},
            ).first()
            if row is None or not str(row[1]).startswith("file://"):
                return 0
            experiment_id, old = row[0], str(row[1]).rstrip("/")
            if old == new or old.rsplit("/", 1)[-1] != root.name:
                return 0  # in place, or an artifact root of another layout: not a moved state
            known = _columns(conn)
            params = {"old": old, "new": new, "n": len(old) + 1, "prefix": old + "/"}
            params |= {"experiment_id": experiment_id, "model": model_name}
            changed = conn.execute(
                sa.text(
                    "UPDATE experiments SET artifact_location = :new "
                    "WHERE experiment_id = :experiment_id"
                ),
                params,
            ).rowcount
            for table, column, owned in COLUMNS:
                if (table, column) not in known:
                    continue
                changed += conn.execute(
                    sa.text(
                        f"UPDATE {table} SET {column} = :new || substr({column}, :n) "
                        f"WHERE {owned} AND ({column} = :old "
                        f"OR substr({column}, 1, :n) = :prefix)"
                    ),
                    params,
                ).rowcount
    finally:
        engine.dispose()
    logger.warning(
        "the state of %s moved or was copied: its MLflow artifacts were at %s, the spec's are "
        "at %s; %d stored location(s) now point at the spec's (the old folder is not touched)",
        model_name,
        old,
        new,
        changed,
    )
    return changed
