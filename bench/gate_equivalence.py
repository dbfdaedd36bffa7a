"""Check: the gate's outputs on the bundled specs, to diff between two trees (not timed).

For each spec of ``safety_cost.AS_OF`` (bike, movielens, drift) at its as-of: a champion fitted
45 days earlier (seed + 1), a candidate at the as-of, and the family's ``evaluate`` in one
``in_memory()``. Prints, as JSON, the verdict, reasons, interval, window and slice scores, the
baseline's verdict, the ranking segment table and hashes of the per-row arrays and of the
candidate's booster. Equal output on two trees = the same gate, to the bit.

    PYTHONPATH=/tmp/before .venv/bin/python bench/gate_equivalence.py > /tmp/before.json
    PYTHONPATH=. .venv/bin/python bench/gate_equivalence.py > /tmp/after.json
    diff /tmp/before.json /tmp/after.json && echo identical
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from typing import Any

import numpy as np
import pandas as pd
from safety_cost import AS_OF, DEMO

from retrain.config import load_spec
from retrain.families import family_of
from retrain.families.spine import Champion, prepare
from retrain.features import in_memory
from retrain.stateful import scratch


def digest(values: Any) -> str | None:
    if values is None:
        return None
    array = np.ascontiguousarray(np.asarray(values, dtype="float64"))
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


def gate_outputs(name: str, as_of: str, state: str) -> dict[str, Any]:
    spec = load_spec(DEMO / name, {"state.dir": state})
    family = family_of(spec)
    prepared = prepare(spec, as_of=pd.Timestamp(as_of))
    earlier = prepare(spec, as_of=pd.Timestamp(as_of) - pd.Timedelta("45D"))
    champ_spec = spec.model_copy(update={"seed": spec.seed + 1})
    old = family.fit_candidate(champ_spec, earlier, scratch("champion"), None)
    champion = Champion("1", old.model, old.window.end, (old.window.version,), {})
    with in_memory():
        trained = family.fit_candidate(spec, prepared, scratch("candidate"), None)
        evaluated = family.evaluate(spec, trained, prepared.holdout, champion)
    result = evaluated.result
    ranking = getattr(evaluated, "ranking", None)
    model_string = getattr(trained.model, "model_string", None)
    return {
        "passed": result.passed,
        "reasons": list(result.reasons),
        "ci": [result.ci_low, result.ci_high],
        "scores": [result.candidate, result.champion, result.baseline],
        "windows": [str(w) for w in result.windows],
        "slices": [str(s) for s in result.slices],
        "rows": [digest(a) for a in (evaluated.y, evaluated.candidate, evaluated.champion)]
        + [digest(evaluated.baseline)],
        "baseline verdict": None
        if evaluated.baseline_result is None
        else str(evaluated.baseline_result),
        "ranking": None if ranking is None else json.dumps(ranking.table(), default=str),
        "booster": None
        if model_string is None
        else hashlib.sha256(model_string().encode()).hexdigest()[:16],
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = {name: gate_outputs(name, as_of, f"{tmp}/{name}") for name, as_of in AS_OF.items()}
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
