"""The oracle's part of the simulator's report: its front on the quality-vs-compute chart, the
table of each policy's share of the oracle's gain, and the files behind them."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from retrain.oracle_losses import OracleResult
from retrain.simulate import Simulation


@dataclass(frozen=True)
class OracleFiles:
    plot: Path
    front_csv: Path
    capture_csv: Path
    summary_json: Path
    section: str  # the HTML section of the report


def oracle_plot(path: Path, simulation: Simulation, result: OracleResult) -> Path:
    """Every policy's quality against its compute, and the oracle's front (the best quality
    any scratch schedule reaches for each amount of fit compute, known in hindsight)."""
    matrix = result.matrix
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    xs = [max(s.compute, 1e-3) for s in result.schedules]
    ys = [matrix.metric_of(s) for s in result.schedules]
    ax.step(xs, ys, where="post", color="C3", lw=1.4, label="hindsight oracle (scratch)")
    ax.scatter(xs, ys, s=12, color="C3")
    for i, run in enumerate(simulation.runs):
        x = max(run.total_cpu_s, 1e-3)
        ax.scatter(x, run.overall, s=50, color=f"C{i % 10}" if i % 10 != 3 else "C9")
        ax.annotate(run.policy, (x, run.overall), textcoords="offset points", xytext=(6, 4),
                    fontsize=9)  # fmt: skip
    ax.axhline(result.never, color="grey", lw=0.8, ls=":", label="first model, never retrained")
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds (policies: fits, gates, decisions; oracle: fits) (log scale)")
    ax.set_ylabel(f"{matrix.metric} over every scored row")
    ax.set_title(f"{simulation.spec_name}: policies against the hindsight oracle")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=110)
    return path


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<td>-</td>"
    if isinstance(value, float):
        return f"<td>{value:.4g}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(no policy)</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(_cell(v) for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def recommended_line(result: OracleResult, recommended: str) -> str:
    """What the recommended policy (a run's label, with its grid point) captures of the
    oracle's gain, in one sentence."""
    got = next((c for c in result.captures if c.policy == recommended), None)
    if got is None:
        return f"the recommended policy {recommended} is not among the oracle's policies"
    share = "-" if math.isnan(got.gain_share) else f"{got.gain_share:.0%}"
    compute = (
        "better than every oracle schedule"
        if got.compute_share is None
        else f"at {got.compute_share:.2f}x the oracle's compute for the same quality"
    )
    return (
        f"the recommended policy {recommended} captures {share} of the oracle's gain over "
        f"never ({compute})"
    )


def write_oracle(
    out: Path, simulation: Simulation, result: OracleResult, recommended: str | None = None
) -> OracleFiles:
    """Write the oracle's chart, tables and summary under ``out``; returns its report section
    (naming what ``recommended``, the report's recommended run, captures)."""
    out.mkdir(parents=True, exist_ok=True)
    matrix = result.matrix
    plot = oracle_plot(out / "quality_vs_compute_oracle.png", simulation, result)
    front_csv = out / "oracle_front.csv"
    pd.DataFrame(result.front_rows()).to_csv(front_csv, index=False)
    capture_csv = out / "oracle_capture.csv"
    pd.DataFrame(result.capture_rows()).to_csv(capture_csv, index=False)
    fits = len(matrix.starts)
    summary = {
        "metric": matrix.metric,
        "never": result.never,
        "best": result.best,
        "candidate_fits": fits,
        "candidate_every": matrix.starts[1] - matrix.starts[0] if fits > 1 else 1,
        "loss_matrix_cpu_s": float(matrix.cpu_s.sum()),
        "best_schedule_retrains": len(result.schedules[-1].retrains) - 1,
        "best_schedule_cpu_s": result.schedules[-1].compute,
        "policies": result.capture_rows(),
        "recommended": recommended,
    }
    summary_json = out / "oracle.json"
    summary_json.write_text(json.dumps(summary, indent=2))
    best = result.schedules[-1]
    line = recommended_line(result, recommended) if recommended is not None else ""
    rec_html = f'<p class="rec">{html.escape(line[:1].upper() + line[1:])}.</p>' if line else ""
    section = f"""<h2>Against the hindsight oracle</h2>
<p>The oracle knows the future: for the scratch recipe it fitted the model of every
{summary["candidate_every"]}-th step ({fits} fits, {matrix.cpu_s.sum():.4g} CPU s), scored each
on every later partition (loss matrix), and solved, at every price per CPU second, the schedule
of least total loss plus price times fit compute (a dynamic program over the day of the last
retrain). Never retraining the first model scores {result.never:.4g}; the best schedule in
hindsight {result.best:.4g} ({len(best.retrains) - 1} retrains, {best.compute:.4g} CPU s).
share_of_oracle_gain: the policy's improvement over never as a share of the oracle's;
compute_share_of_oracle: the policy's CPU over the least CPU the oracle needs for the same
quality (policies pay gates and decisions too; - : better than every oracle schedule).</p>
{rec_html}{_table(result.capture_rows())}
<img src="{plot.name}">
<p>Front: <a href="{front_csv.name}">{front_csv.name}</a>;
table: <a href="{capture_csv.name}">{capture_csv.name}</a>.</p>
"""
    return OracleFiles(plot, front_csv, capture_csv, summary_json, section)
