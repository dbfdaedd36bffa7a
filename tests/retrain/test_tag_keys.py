"""Lineage tag keys are defined once (retrain.families.lineage) and read through Lineage."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pandas as pd

from retrain.families.lineage import PREFIX, Lineage, Tag, backtest_key, label_key

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("retrain", "registry", "flows", "gateway")
# a string that looks like a tag key: the prefix, then dotted lower-case words, nothing else
KEY = re.compile(rf"^{re.escape(PREFIX)}[a-z0-9_]+(\.[a-z0-9_]+)*\.?$")
# dotted names that are not tag keys: Prefect event names (flows.events) and loggers
NOT_TAGS = ("retrain.model.", "retrain.alias.tampered", "retrain.ledger")


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, nodes)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name.rstrip(".")) is not None
    except ModuleNotFoundError:
        return False


def literal_tag_keys() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "retrain" / "families" / "lineage.py":
                continue
            tree = ast.parse(path.read_text())
            docs = _docstrings(tree)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docs
                    and KEY.match(node.value)
                    and not node.value.startswith(NOT_TAGS)
                    and not _is_module(node.value)
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return found


def test_no_module_writes_a_tag_key_as_a_string_literal():
    assert literal_tag_keys() == []


def test_the_scan_finds_a_literal_key(tmp_path, monkeypatch):
    # the scan is not vacuous: a literal key in a scanned package is reported
    fake = tmp_path / "flows"
    fake.mkdir()
    (fake / "bad.py").write_text('WHERE = tags.get("retrain.window_end")\n')
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    monkeypatch.setattr(f"{__name__}.PACKAGES", ("flows",))
    assert literal_tag_keys() == ["flows/bad.py:1: 'retrain.window_end'"]


def test_every_fixed_key_is_one_tag_under_the_prefix():
    values = [str(tag) for tag in Tag]
    assert len(values) == len(set(values))
    assert all(KEY.match(value) for value in values)
    assert backtest_key("mae", "baseline") == "retrain.backtest.mae.baseline"
    assert label_key("mean") == "retrain.label.mean"


def test_the_accessor_reads_every_key_with_its_type():
    lineage = Lineage(
        {
            Tag.WINDOW_END: "2011-07-01",
            Tag.DATA_VERSION: "dv-served",
            Tag.VALIDATED_DATA_VERSION: "dv-validated",
            Tag.DECISION: "beats the champion",
            backtest_key("mae", "candidate"): "12.5",
            backtest_key("mae", "baseline"): "40",
            backtest_key("mae", "champion"): "not a number",
            label_key("mean"): "3.0",
        }
    )
    assert lineage.data_end == pd.Timestamp("2011-07-01")  # no data_end tag: the window's end
    assert Lineage({Tag.DATA_END: "2011-06-30 23:00", Tag.WINDOW_END: "2011-07-01"}).data_end == (
        pd.Timestamp("2011-06-30 23:00")
    )
    assert lineage.training_data_version == "dv-validated"
    assert Lineage({Tag.DATA_VERSION: "dv"}).training_data_version == "dv"
    assert lineage.decision == "beats the champion"
    assert Lineage({}).decision is None
    assert lineage.metric == "mae"
    assert Lineage({}).metric is None
    assert lineage.backtests() == {"backtest.mae.candidate": 12.5, "backtest.mae.baseline": 40.0}
