"""``retrain simulate --oracle``: the hindsight oracle's table and front join the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import spec_dict

runner = CliRunner()


def test_simulate_with_the_oracle_adds_its_table_front_and_chart(
    tmp_path: Path, bike_dir: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state")))
    out = tmp_path / "sim"
    result = runner.invoke(
        app,
        ["simulate", "--spec", str(spec), "--policies", "never,weekly", "--out", str(out),
         "--oracle", "--oracle-every", "3", "--set", "lightgbm.num_boost_round=10"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "hindsight oracle: never" in text and "share of oracle gain" in text
    summary = json.loads((out / "oracle.json").read_text())
    assert summary["candidate_every"] == 3 and summary["metric"] == "mae"
    assert summary["best"] <= summary["never"]  # mae: lower is better
    # the report's own recommendation, and what it captures of the oracle's gain
    recommended = json.loads((out / "recommendation.json").read_text())["policy"]
    assert summary["recommended"] == recommended
    share = next(p for p in summary["policies"] if p["policy"] == recommended)
    line = f"the recommended policy {recommended} captures {share['share_of_oracle_gain']:.0%}"
    assert f"oracle: {line} of the oracle's gain over never" in text
    captured = pd.read_csv(out / "oracle_capture.csv")
    assert list(captured["policy"]) == ["never", "weekly"]
    front = pd.read_csv(out / "oracle_front.csv")
    assert front["fit_cpu_s"].is_monotonic_increasing and front["mae"].is_monotonic_decreasing
    page = (out / "report.html").read_text()
    assert "Against the hindsight oracle" in page and "quality_vs_compute_oracle.png" in page
    assert line[:1].upper() + line[1:] in page
    assert (out / "quality_vs_compute_oracle.png").stat().st_size > 0


def test_oracle_every_below_one_is_refused_naming_the_option(
    tmp_path: Path, bike_dir: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state")))
    result = runner.invoke(
        app,
        ["simulate", "--spec", str(spec), "--policies", "never", "--out", str(tmp_path / "o"),
         "--oracle", "--oracle-every", "0", "--set", "lightgbm.num_boost_round=5"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--oracle-every must be at least 1, got 0" in " ".join(result.output.split())
