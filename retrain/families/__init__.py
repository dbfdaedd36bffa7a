"""Model families as peers behind one protocol, and the shared spine they all use.

- ``spine``: the types of one retrain (``Prepared``, ``Champion``, ``Trained``, ``Evaluated``),
  ``prepare`` (ingest, feature cache, windows) and the window helpers;
- ``lineage``: the tag keys of a registered version (``Tag``) and their typed reader
  (``Lineage``);
- ``protocol``: :class:`~retrain.families.protocol.Family`, the steps that differ per family;
- ``baseline``: the trivial baselines (mean, majority class, positive rate; popularity);
- one module per family (``lightgbm``, ``als``), each exporting ``FAMILY``. A family never
  imports another family (an import-linter contract).

The flows, the monitor and the simulator call ``family_of(spec)`` and its steps, never a family
module by name. Adding a family: one module with a ``FAMILY`` object, one line in ``REGISTERED``
(and the name in ``ModelSpec.family``). A family module is imported on first use only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from retrain.errors import SpecError

if TYPE_CHECKING:
    from retrain.config import ModelSpec
    from retrain.families.protocol import Family

# family name -> the module that holds its FAMILY object
REGISTERED: dict[str, str] = {
    "lightgbm": "retrain.families.lightgbm",
    "als": "retrain.families.als",
}


def register(name: str, module: str) -> None:
    """Make ``family = name`` resolve to ``module``'s ``FAMILY`` object."""
    REGISTERED[name] = module


def family_named(name: str) -> Family:
    try:
        module = REGISTERED[name]
    except KeyError:
        raise SpecError(
            f"family {name!r} is not registered; known families: {', '.join(sorted(REGISTERED))}"
        ) from None
    family: Family = importlib.import_module(module).FAMILY
    return family


def family_of(spec: ModelSpec) -> Family:
    """The steps of the spec's model family."""
    return family_named(spec.family)


__all__ = ["REGISTERED", "family_named", "family_of", "register"]
