"""Data age: each version records the end of its training data; the age counts from it."""

from __future__ import annotations

import doctest

import pandas as pd

from retrain import freshness
from retrain.families.lightgbm import evaluate, fit
from retrain.families.lineage import Tag, lineage_tags
from retrain.families.spine import prepare
from retrain.stateful import scratch


def test_the_freshness_doctests_pass():
    assert doctest.testmod(freshness).failed == 0


def test_a_fit_records_its_last_training_row_and_the_tags_carry_it(bike_spec):
    prepared = prepare(bike_spec, pd.Timestamp("2011-04-22 12:00"))

    trained = fit(bike_spec, prepared, scratch("test"))
    evaluated = evaluate(bike_spec, trained, prepared.holdout, None)
    tags = lineage_tags(bike_spec, "manual", "test", trained, prepared, evaluated, None, "me")

    # the window ends at the holdout's start (noon); its last complete day ends at 23:00 the
    # day before: the newest row the model saw
    assert prepared.train.end == pd.Timestamp("2011-04-15 12:00")
    assert trained.data_end == pd.Timestamp("2011-04-14 23:00")
    assert tags[Tag.DATA_END] == "2011-04-14 23:00:00"
    assert freshness.data_age(pd.Timestamp("2011-04-22 12:00"), freshness.data_end(tags)) == (
        pd.Timedelta(days=7, hours=13)
    )
