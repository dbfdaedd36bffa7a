"""``retrain simulate``: one command from a spec to the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from retrain.config import load_spec
from tests.conftest import als_spec_dict, spec_dict

runner = CliRunner()


def flat(output: str) -> str:
    return " ".join(output.split())


def write_spec(tmp_path: Path, bike_dir: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state")))
    return path


def test_simulate_writes_the_report_and_prints_the_recommendation(
    tmp_path: Path, bike_dir: Path
) -> None:
    spec = write_spec(tmp_path, bike_dir)
    out = tmp_path / "sim"
    result = runner.invoke(
        app,
        [
            "simulate", "--spec", str(spec), "--policies", "never,weekly,baseline",
            "--out", str(out), "--tolerance", "0.05", "--set", "lightgbm.num_boost_round=10",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "recommendation:" in text
    assert "feature cache: 61 computed, 0 cached" in text
    chosen = json.loads((out / "recommendation.json").read_text())
    assert chosen["policy"] in {"never", "weekly", "baseline"}
    assert chosen["tolerance"] == 0.05
    assert "lightgbm.num_boost_round=10" in (out / "report.html").read_text()
    for name in ("metric_over_time.png", "quality_vs_compute.png", "summary.csv"):
        assert (out / name).is_file()

    again = runner.invoke(
        app, ["simulate", "--spec", str(spec), "--policies", "never", "--out", str(out), "--json"]
    )
    assert again.exit_code == 0, again.output
    replay = json.loads(again.stdout)  # stdout holds the JSON only: no progress lines
    assert replay["feature_cache"] == {"computed": 0, "cached": 61}
    assert replay["recommendation"]["policy"] == "never"
    [row] = replay["policies"]
    assert row["policy"] == "never"
    # full precision, as the report's summary.csv holds it (the table shows 4 digits)
    with (out / "summary.csv").open() as handle:
        [written] = [r for r in csv.DictReader(handle) if r["policy"] == "never"]
    assert row[replay["metric"]] == pytest.approx(float(written[replay["metric"]]), rel=1e-12)


def test_simulate_rejects_bad_options_naming_the_fix(tmp_path: Path, bike_dir: Path) -> None:
    spec = write_spec(tmp_path, bike_dir)
    bad_policy = runner.invoke(app, ["simulate", "--spec", str(spec), "--policies", "hourly"])
    assert bad_policy.exit_code == 2
    assert "unknown policy 'hourly': choose from never" in flat(bad_policy.output)
    bad_set = runner.invoke(app, ["simulate", "--spec", str(spec), "--set", "oops"])
    assert bad_set.exit_code == 2
    assert "--set 'oops' is not key=value" in flat(bad_set.output)
    bad_key = runner.invoke(app, ["simulate", "--spec", str(spec), "--set", "lightgbm.rounds=3"])
    assert bad_key.exit_code == 3  # a bad spec key
    assert "lightgbm.rounds: unknown key" in flat(bad_key.output)


def test_simulate_an_als_spec_runs_the_als_family_through_the_gate(
    tmp_path: Path, taste_csv: Path
) -> None:
    spec = tmp_path / "als.yaml"
    spec.write_text(yaml.safe_dump(als_spec_dict(taste_csv, tmp_path / "state")))
    out = tmp_path / "sim"
    result = runner.invoke(
        app,
        ["simulate", "--spec", str(spec), "--policies", "never,stateful,baseline",
         "--out", str(out), "--end", "2024-02-01"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "taste-als: 7 partitions replayed" in text
    assert "feature cache: 31 computed, 0 cached" in text
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("policy,ndcg@5,")
    assert [row.split(",")[0] for row in summary[1:]] == ["never", "stateful", "baseline"]
    report = (out / "report.html").read_text()
    assert "(als)" in report and "popularity baseline" in report

    again = runner.invoke(
        app, ["simulate", "--spec", str(spec), "--policies", "never", "--out", str(out)]
    )
    assert again.exit_code == 0, again.output
    assert "feature cache: 9 computed, 31 cached" in flat(again.output)


def test_simulate_grid_writes_the_recommended_spec(tmp_path: Path, bike_dir: Path) -> None:
    spec = write_spec(tmp_path, bike_dir)
    out, chosen_spec = tmp_path / "sim", tmp_path / "chosen.toml"
    result = runner.invoke(
        app,
        [
            "simulate", "--spec", str(spec), "--policies", "never,weekly", "--out", str(out),
            "--end", "2011-04-12", "--grid", "windows.holdout=3D,7D",
            "--write-spec", str(chosen_spec), "--progress-every", "5",
        ],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    chosen = json.loads((out / "recommendation.json").read_text())
    assert chosen["retrain_policy"] in {"never", "weekly"}
    holdout = chosen["settings"]["windows.holdout"]
    assert chosen["policy"] == f"{chosen['retrain_policy']} [windows.holdout={holdout}]"
    written = load_spec(chosen_spec)
    assert written.windows.holdout == holdout
    head = "# written by `retrain simulate --write-spec`: recommended policy"
    assert chosen_spec.read_text().startswith(f"{head} {chosen['retrain_policy']}")
    text = flat(result.output)
    assert "weekly [windows.holdout=3D]: step 5/" in text  # progress lines without a terminal
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 5  # 2 policies x 2 grid points
    assert summary[4].startswith("weekly [windows.holdout=7D],")
