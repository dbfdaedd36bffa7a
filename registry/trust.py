"""Which model artifacts may load: inside the registry's own store, with the content registered.

Loading a model runs its code (an MLflow pyfunc imports its loader module), so two checks stand
between a version's ``source`` and that code:

- :func:`inside`: the location, normalised and resolved (``..`` segments, symlinks), lies under
  the artifact root of the run that logged it (same scheme and host for remote stores);
- :func:`verify_digest`: the downloaded files hash to the digest recorded on the version at
  registration (:func:`model_digest`, the tag ``retrain.model_sha256``).

>>> inside("file:///s/a/run/artifacts/model", "file:///s/a/run/artifacts")
True
>>> inside("file:///s/a/run/artifacts/../../../x/evil", "file:///s/a/run/artifacts")
False
>>> inside("s3://bucket/e/run/artifacts/model", "s3://bucket/e/run/artifacts")
True
>>> inside("s3://other/e/run/artifacts/model", "s3://bucket/e/run/artifacts")
False
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from registry.errors import UntrustedModel
from retrain.families.lineage import Tag

LOCAL_SCHEMES = ("", "file")


def _local_path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def inside(uri: str, root: str) -> bool:
    """True when ``uri`` names something strictly below ``root`` after normalising both.

    Any ``..`` segment is refused outright (whatever it resolves to); a local location is
    then resolved with its symlinks, so a link inside the store that points out of it is
    outside; a remote one must have the root's scheme and host.
    """
    target, base = urlparse(uri), urlparse(root)
    if ".." in unquote(target.path).split("/"):
        return False
    if target.scheme in LOCAL_SCHEMES and base.scheme in LOCAL_SCHEMES:
        real = Path(os.path.realpath(_local_path(uri)))
        real_root = Path(os.path.realpath(_local_path(root)))
        return real != real_root and real.is_relative_to(real_root)
    if (target.scheme, target.netloc) != (base.scheme, base.netloc):
        return False
    path = posixpath.normpath(unquote(target.path) or "/")
    prefix = posixpath.normpath(unquote(base.path) or "/").rstrip("/") + "/"
    return path.startswith(prefix)


def model_digest(directory: Path | str) -> str:
    """sha256 over every file of a model directory: relative POSIX path and content, in order.

    A symbolic link is refused: what it points at may lie anywhere. Python's byte-code caches
    (``__pycache__``, written beside the bundled code when a tool loads the model in place, e.g.
    ``mlflow models serve`` of a local store) are not the model: they are left out here and
    deleted from every downloaded copy before it loads (:func:`drop_bytecode`), so a planted
    ``.pyc`` never runs. Nor is the metadata MLflow adds after registration
    (:data:`MLFLOW_WRITES`).
    """
    root = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if BYTECODE in path.relative_to(root).parts or path.suffix == ".pyc":
            continue
        if path.relative_to(root).as_posix() in MLFLOW_WRITES:
            continue
        if path.is_symlink():
            raise UntrustedModel(
                f"the model at {root} holds a symbolic link ({path.relative_to(root)}): "
                "retrain hashes and loads only plain files; register the model again with retrain"
            )
        if not path.is_file():
            continue
        name = path.relative_to(root).as_posix().encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


BYTECODE = "__pycache__"
# files MLflow itself adds to a registered model's folder after registration (loading
# ``models:/NAME@ALIAS`` from a local store writes the name and version there): metadata, not
# code, and not part of what was registered
MLFLOW_WRITES = frozenset({"registered_model_meta"})


def drop_bytecode(directory: Path | str) -> None:
    """Delete Python byte-code caches from a downloaded model (see :func:`model_digest`)."""
    root = Path(directory)
    for cache in sorted(root.rglob(BYTECODE), reverse=True):
        if cache.is_dir() and not cache.is_symlink():
            shutil.rmtree(cache)
    for stray in root.rglob("*.pyc"):
        stray.unlink()


def verify_digest(directory: Path | str, expected: str | None, where: str, fix: str) -> None:
    """Refuse (UntrustedModel) a downloaded model whose content is not the registered one.

    A version without a digest is refused too: retrain cannot tell its code from anyone
    else's (it was registered by hand, or before retrain recorded digests).
    """
    if not expected:
        raise UntrustedModel(
            f"{where} carries no content digest (tag {Tag.MODEL_SHA256}): it was registered "
            f"by hand or before retrain recorded digests, so its code is not loaded; {fix}"
        )
    actual = model_digest(directory)
    if actual != expected:
        raise UntrustedModel(
            f"{where}: its files hash to sha256 {actual[:16]}..., not the {expected[:16]}... "
            f"recorded when it was registered (changed after registration); {fix}"
        )
