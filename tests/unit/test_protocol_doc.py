"""docs/protocol.md agrees with the message declarations, and every declared message round-trips."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from rtdecode import wire
from rtdecode.errors import ProtocolError
from rtdecode.wire.messages import INPUTS, RESULTS, Ranking, Status, parse
from rtdecode.wire.schema import field_table

ROOT = Path(__file__).parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("protocol_tables", ROOT / "tools" / "protocol_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_protocol_doc_tables_are_the_declarations():
    text = (ROOT / "docs" / "protocol.md").read_text()
    for cls in RESULTS + INPUTS:
        assert f"<!-- fields:{cls.kind} -->\n{field_table(cls)}\n<!-- /fields -->" in text, cls.kind
    assert _tool().render(text) == text


def test_every_field_is_documented_with_a_meaning_and_a_known_type():
    for cls in RESULTS + INPUTS:
        for f in dataclasses.fields(cls):
            assert f.metadata["meaning"], (cls.kind, f.name)
            assert f.metadata["where"] in ("header", "array", "arrays"), (cls.kind, f.name)


def test_a_ranking_round_trips_and_a_baseline_ranking_carries_no_arrays():
    base = dict(session="s", series="r", seq=3, acq_time_s=1.5, tr_s=2.0)
    full = Ranking(
        **base, status="ok", censored=False, rois=["VC"], layers=["l"], labels=[[["a"]]],
        indices=np.array([[[7]]], np.int32), scores=np.array([[[0.5]]], np.float32),
    )  # fmt: skip
    back = parse(wire.decode(full.encode()))
    assert isinstance(back, Ranking) and back.labels == [[["a"]]] and back.indices.tolist() == [[[7]]]
    baseline = parse(wire.decode(Ranking(**base, status="baseline", censored=True).encode()))
    assert baseline.rois is None and baseline.indices is None
    assert "rois" not in Ranking(**base, status="baseline", censored=True).header()


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"kind": "status"}, "lacks header field 'event'"),
        ({"kind": "status", "event": 3}, "'event' must be a JSON string"),
        ({"kind": "status", "event": "gap", "missing_from": True}, "'missing_from' must be a JSON integer"),
        ({"kind": "nonsense"}, "unknown message kind"),
        ({}, "unknown message kind None"),
    ],
)
def test_parse_refuses_missing_and_mistyped_fields_by_name(header, match):
    with pytest.raises(ProtocolError, match=match):
        parse(wire.decode(wire.encode("status", header)))


def test_unknown_header_fields_are_ignored():
    msg = parse(wire.decode(wire.encode("status", {"kind": "status", "event": "heartbeat", "new": 1})))
    assert isinstance(msg, Status) and msg.event == "heartbeat"
