"""The simulator's report: a static HTML page with PNG charts, CSV tables and a recommendation."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from retrain.simulate import PolicyChoice, Simulation, candidates_of, choose_policy, pareto_front

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    html: Path
    metric_plot: Path
    pareto_plot: Path
    summary_csv: Path
    recommendation: PolicyChoice
    table: pd.DataFrame


def summary_frame(simulation: Simulation) -> pd.DataFrame:
    return pd.DataFrame(simulation.table())


def metric_plot(path: Path, simulation: Simulation, smooth: int = 14) -> Path:
    """Every policy's prequential metric over time on one chart (rolling mean of ``smooth``
    partitions)."""
    steps = simulation.steps_frame()
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (policy, frame) in enumerate(steps.groupby("policy", sort=False)):
        series = frame.set_index("start")[simulation.metric]
        rolled = series.rolling(smooth, min_periods=1).mean()
        style = ":" if policy in {"never", "baseline"} else "-"
        ax.plot(rolled.index, rolled.to_numpy(), style, color=f"C{i}", lw=1.4, label=policy)
    ax.set_ylabel(f"{simulation.metric} (rolling mean of {smooth} partitions)")
    ax.set_title(
        f"{simulation.spec_name}: each champion scored on the next, unseen partition "
        f"({simulation.first_step} to {simulation.last_step})"
    )
    ax.grid(alpha=0.3)
    ax.legend(ncols=4, fontsize=9)
    fig.savefig(path, dpi=110)
    return path


def pareto_plot(path: Path, simulation: Simulation, recommendation: PolicyChoice) -> Path:
    """Quality against training compute, with the Pareto front and the recommendation."""
    candidates = candidates_of(simulation)
    front = pareto_front(candidates, simulation.greater_is_better)
    by_name = {c.name: c for c in candidates}
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for c in candidates:
        marker = "*" if c.name == recommendation.policy else "o"
        ax.scatter(max(c.cost, 1e-3), c.metric, s=160 if marker == "*" else 50, marker=marker)
        ax.annotate(c.name, (max(c.cost, 1e-3), c.metric), textcoords="offset points",
                    xytext=(6, 4), fontsize=9)  # fmt: skip
    xs = [max(by_name[n].cost, 1e-3) for n in front]
    ys = [by_name[n].metric for n in front]
    ax.step(xs, ys, where="post", color="k", lw=1, alpha=0.6, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds: training, gating and deciding (log scale)")
    ax.set_ylabel(f"{simulation.metric} over every scored row")
    ax.set_title(f"quality vs compute; recommended: {recommendation.policy} (star)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=110)
    return path


def _table_html(table: pd.DataFrame, recommended: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for _, row in table.iterrows():
        cells = "".join(
            f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
            for v in row.tolist()
        )
        style = (
            ' style="font-weight:bold;background:#eef6ee"' if row["policy"] == recommended else ""
        )
        rows.append(f"<tr{style}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as a Markdown table (for a README or a pull request)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        lines.append(
            "| "
            + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.tolist())
            + " |"
        )
    return "\n".join(lines)


def write_report(
    simulation: Simulation, out: Path, tolerance: float, sections: Sequence[str] = ()
) -> Report:
    """Charts, tables and the recommendation of a simulation, written under ``out``;
    ``sections`` are extra HTML blocks (e.g. the oracle's) placed before the notes."""
    out.mkdir(parents=True, exist_ok=True)
    table = summary_frame(simulation)
    choice = choose_policy(candidates_of(simulation), tolerance, simulation.greater_is_better)
    metric_png = metric_plot(out / "metric_over_time.png", simulation)
    pareto_png = pareto_plot(out / "quality_vs_compute.png", simulation, choice)
    summary_csv = out / "summary.csv"
    table.to_csv(summary_csv, index=False)
    simulation.steps_frame().to_csv(out / "steps.csv", index=False)
    simulation.trainings_frame().to_csv(out / "trainings.csv", index=False)
    front = pareto_front(candidates_of(simulation), simulation.greater_is_better)
    (out / "recommendation.json").write_text(
        json.dumps(
            {
                "policy": choice.policy,
                "best": choice.best,
                "within_tolerance": list(choice.within),
                "tolerance": tolerance,
                "pareto_front": list(front),
                "reason": choice.reason,
                "metric": simulation.metric,
            },
            indent=2,
        )
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in simulation.notes)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8">
<title>retrain simulate: {html.escape(simulation.spec_name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f4f4f4}}.rec{{font-size:1.2em;padding:.6em;background:#eef6ee}}</style></head>
<body>
<h1>How often should {html.escape(simulation.spec_name)} be retrained?</h1>
<p class="rec"><b>Recommendation: {html.escape(choice.policy)}</b>.
{html.escape(choice.reason)}.</p>
<p>Prequential replay of {simulation.partitions} partitions ({simulation.first_step} to
{simulation.last_step}): at every step each policy's champion is scored on the next partition
before that partition is used for training. Metric: {html.escape(simulation.metric)}
({"higher" if simulation.greater_is_better else "lower"} is better), over every scored row;
compute: CPU seconds of every fit and gate (train_cpu_s) plus the policy's own decisions
(decide_cpu_s: the continual policy measures its signals at every step).
Pareto front (cheapest first):
{html.escape(", ".join(front))}. Policies within {tolerance:.1%} of the best
({html.escape(choice.best)}): {html.escape(", ".join(choice.within))}.</p>
{_table_html(table, choice.policy)}
<h2>Metric over time</h2><img src="{metric_png.name}" width="100%">
<h2>Quality vs compute</h2><img src="{pareto_png.name}">
{"".join(sections)}
<h2>Notes</h2><ul>
<li>Feature cache: {simulation.features_computed} partition(s) computed,
{simulation.features_cached} read from the cache.</li>
<li>Promotions pass the real backtest gate and are approved automatically: a replay has no
operator. Nothing is registered.</li>
{notes}</ul>
<p>Per step: <a href="steps.csv">steps.csv</a>;
per training: <a href="trainings.csv">trainings.csv</a>;
summary: <a href="summary.csv">summary.csv</a>.</p>
</body></html>
"""
    page_path = out / "report.html"
    page_path.write_text(page, encoding="utf-8")
    logger.info("simulation report written to %s", page_path)
    return Report(page_path, metric_png, pareto_png, summary_csv, choice, table)
