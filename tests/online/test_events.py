"""`online.events.EventReader.split_chunk`: a mini-batch chunk as the very table River's own loop builds, or None."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest

from online.config import EventsConfig
from online.events import EventReader

ROWS = [
    {"id": i, "f": i / 7, "i": i * 3, "mixed": i if i % 2 else i + 0.5, "b": i % 3 == 0, "label": i % 2 == 0}
    for i in range(40)
]


def reader(**events) -> EventReader:
    return EventReader(EventsConfig(target="label", exclude=["id"], **events), label_kind="binary")


def rivers_table(events: list[dict]) -> pd.DataFrame:
    """What River's own mini-batch loop learns from: ``pandas.DataFrame`` of the feature dicts."""
    return pd.DataFrame([{k: v for k, v in e.items() if k not in ("label", "id")} for e in events])


def test_a_plain_chunk_is_the_table_pandas_builds_from_its_dicts_and_the_events_are_left_as_they_were():
    events = copy.deepcopy(ROWS)
    frame, labels = reader().split_chunk(events)
    pd.testing.assert_frame_equal(frame, rivers_table(ROWS), check_exact=True)  # values, dtypes, column order and index
    assert [str(dtype) for dtype in frame.dtypes] == ["float64", "int64", "float64", "bool"]
    assert labels == [e["label"] for e in ROWS]
    assert events == ROWS


def test_fields_in_another_order_are_read_by_name():
    events = [dict(reversed(list(e.items()))) if i % 2 else dict(e) for i, e in enumerate(ROWS)]
    frame, _ = reader().split_chunk(events)
    pd.testing.assert_frame_equal(frame, rivers_table(events), check_exact=True)


@pytest.mark.parametrize("change", [
    {"f": "x"},  # a string (refused, or categorical: split names it)
    {"f": None},  # null
    {"f": math.nan}, {"f": math.inf},  # not finite
    {"f": [1.0, 2.0]}, {"f": {"a": 1}},  # an array, an object
    {"i": True},  # a boolean among integers: pandas keeps that column as objects
    {"f": False},  # and among floats
    {"i": 2**63},  # beyond int64: objects in pandas
    {"mixed": 2**63},  # among floats
    {"label": "maybe"}, {"label": 2}, {"label": [True]},  # labels a binary model does not take
])
def test_a_chunk_split_would_refuse_or_pandas_would_type_otherwise_goes_event_by_event(change):
    events = copy.deepcopy(ROWS)
    events[17].update(change)
    assert reader().split_chunk(events) is None


def test_uneven_fields_keyed_or_listed_features_a_transform_and_non_objects_go_event_by_event():
    missing_and_extra = copy.deepcopy(ROWS)
    del missing_and_extra[3]["f"]
    missing_and_extra[3]["g"] = 1.0  # as many fields as the others
    assert reader().split_chunk(missing_and_extra) is None
    longer = copy.deepcopy(ROWS)
    longer[5]["g"] = 1.0
    assert reader().split_chunk(longer) is None
    assert reader().split_chunk(ROWS[:3] + [[1, 2]] + ROWS[4:]) is None
    unlabelled = [{k: v for k, v in e.items() if k != "label"} for e in ROWS]
    assert reader().split_chunk(unlabelled) is None
    assert reader(key="id").split_chunk(ROWS) is None
    assert reader(features=["f", "i"]).split_chunk(ROWS) is None
    assert EventReader(EventsConfig(target="label"), label_kind="binary", transform=dict).split_chunk(ROWS) is None


def test_a_null_label_is_kept_as_none_and_max_abs_value_is_checked():
    events = copy.deepcopy(ROWS)
    events[4]["label"] = None
    frame, labels = reader().split_chunk(events)
    assert labels[4] is None and len(frame) == len(ROWS)
    assert reader(max_abs_value=117).split_chunk(ROWS) is not None  # i goes up to 117, and booleans are never beyond
    assert reader(max_abs_value=200).split_chunk(ROWS) is not None
    assert reader(max_abs_value=116).split_chunk(ROWS) is None
    numbers = EventReader(EventsConfig(target="label", exclude=["id"], max_abs_value=1000), label_kind="number")
    assert numbers.split_chunk([{**e, "label": 5000.0} for e in ROWS]) is None
    assert numbers.split_chunk([{**e, "label": float(n)} for n, e in enumerate(ROWS)])[1] == [float(n) for n in range(40)]
