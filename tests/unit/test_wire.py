import json

import numpy as np
import pytest

from rtdecode import wire
from rtdecode.errors import ProtocolError
from rtdecode.volume import Stage, Volume, new_stamps

DTYPES = sorted(wire.DTYPES)
SHAPES = [(), (0,), (7,), (3, 4), (2, 3, 5), (4, 1, 2, 3)]


def _array(dtype: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal(shape) * 100
    if dtype.startswith("complex"):
        a = a + 1j * rng.standard_normal(shape)
    return np.asarray(a).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_roundtrip_every_dtype_and_shape(dtype, shape):
    a = _array(dtype, shape, np.random.default_rng(0))
    msg = wire.decode(wire.encode("t", {"x": 1}, {"a": a}))
    assert msg.topic == "t" and msg.header["x"] == 1
    assert msg.arrays["a"].dtype == a.dtype and msg.arrays["a"].shape == a.shape
    np.testing.assert_array_equal(msg.arrays["a"], a)


@pytest.mark.parametrize("dtype", ["int16", "float32", "float64", "complex64"])
def test_roundtrip_big_endian_and_non_contiguous(dtype):
    rng = np.random.default_rng(1)
    big = _array(dtype, (5, 6), rng).astype(np.dtype(dtype).newbyteorder(">"))
    strided = _array(dtype, (6, 8), rng)[::2, ::3]
    frames = wire.encode("t", {}, {"big": big, "strided": strided})
    assert json.loads(bytes(frames[1]))["arrays"][0]["byteorder"] == "big"
    msg = wire.decode(frames)
    np.testing.assert_array_equal(msg.arrays["big"], big)
    np.testing.assert_array_equal(msg.arrays["strided"], strided)


def test_encode_does_not_copy_contiguous_data():
    a = np.arange(10, dtype=np.float32)
    frames = wire.encode("t", {}, {"a": a})
    a[0] = 42  # the frame aliases the array: this is why senders hand over fresh arrays
    assert np.frombuffer(frames[2], dtype=np.float32)[0] == 42


def test_volume_roundtrip_keeps_every_field():
    rng = np.random.default_rng(2)
    affine = np.array([[-3.0, 0, 0, 90], [0, 3, 0, -100], [0, 0, 3.3, -50], [0, 0, 0, 1]])
    stamps = new_stamps()
    stamps[Stage.ACQUIRED], stamps[Stage.SENT] = 123, 456
    vol = Volume(
        rng.integers(-100, 3000, (8, 9, 10)).astype(np.int16),
        affine,
        17,
        2.5,
        1.7e9 + 0.25,
        "ses-01",
        "run-02",
        stamps,
    )
    out = wire.decode_volume(wire.decode(wire.encode_volume(vol)))
    np.testing.assert_array_equal(out.data, vol.data)
    np.testing.assert_array_equal(out.affine, affine)
    assert (out.seq, out.tr_s, out.acq_time_s, out.session, out.series) == (
        17,
        2.5,
        1.7e9 + 0.25,
        "ses-01",
        "run-02",
    )
    np.testing.assert_array_equal(out.stamps, stamps)


def _frames(header_overrides=None, data=b"\x00" * 8, arrays=None):
    header = {
        "protocol": "rtdecode",
        "version": 1,
        "arrays": arrays
        if arrays is not None
        else [{"name": "a", "dtype": "float32", "byteorder": "little", "shape": [2]}],
    }
    header.update(header_overrides or {})
    return [b"t", json.dumps(header).encode(), data]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([b"t"], "at least 2 frames"),
        ([b"\xff\xfe", b"{}"], "topic is not UTF-8"),
        ([b"t", b"{not json"], "not valid JSON"),
        ([b"t", b"[1, 2]"], "must be a JSON object"),
        (_frames({"protocol": "other"}), "'protocol' must be"),
        (_frames({"version": 2}), "unsupported protocol version 2"),
        (_frames(data=b"\x00" * 7), "frame has 7 bytes"),
        (_frames(arrays=[]), "lists 0 arrays but the message has 1"),
        (
            _frames(arrays=[{"name": "a", "dtype": "object", "byteorder": "little", "shape": [2]}]),
            "unsupported dtype",
        ),
        (
            _frames(arrays=[{"name": "a", "dtype": "float32", "byteorder": "middle", "shape": [2]}]),
            "'byteorder'",
        ),
        (
            _frames(arrays=[{"name": "a", "dtype": "float32", "byteorder": "little", "shape": [-2]}]),
            "'shape'",
        ),
        (_frames(arrays=[{"name": "a", "dtype": "float32", "byteorder": "little", "shape": "2"}]), "'shape'"),
        (_frames(arrays=["a"]), "array spec must be an object"),
        (  # 2**64 elements: an int64 product would wrap to 0 and accept an empty frame
            _frames(
                data=b"", arrays=[{"name": "a", "dtype": "int8", "byteorder": "little", "shape": [2**62, 4]}]
            ),
            "frame has 0 bytes",
        ),
    ],
)
def test_malformed_messages_are_refused_with_the_reason(frames, match):
    with pytest.raises(ProtocolError, match=match):
        wire.decode(frames)


def test_volume_message_missing_fields_are_named():
    frames = wire.encode(
        "volume", {"kind": "volume", "seq": 0, "session": "s", "series": "r"}, {"data": np.zeros((2, 2, 2))}
    )
    with pytest.raises(ProtocolError, match="lacks header field 'affine'"):
        wire.decode_volume(wire.decode(frames))
    header = {
        "kind": "volume",
        "seq": -1,
        "affine": np.eye(4).tolist(),
        "tr_s": 2.0,
        "acq_time_s": 0.0,
        "session": "s",
        "series": "r",
    }
    with pytest.raises(ProtocolError, match="'seq' must be an integer from 0 to"):
        wire.decode_volume(wire.decode(wire.encode("volume", header, {"data": np.zeros((2, 2, 2))})))
    with pytest.raises(ProtocolError, match="must be 3-D"):
        wire.decode_volume(
            wire.decode(wire.encode("volume", {**header, "seq": 1}, {"data": np.zeros((2, 2))}))
        )


def test_reserved_header_fields_and_unsupported_dtypes_are_refused_on_encode():
    with pytest.raises(ProtocolError, match="reserved"):
        wire.encode("t", {"version": 3})
    with pytest.raises(ProtocolError, match="not supported"):
        wire.encode("t", {}, {"a": np.array(["x"])})


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"protocol": "rtdecode", "version": true}', "unsupported protocol version True"),
        (b'{"protocol": "rtdecode", "version": 1, "tr_s": NaN}', "NaN is not a JSON number"),
        (b'{"protocol": "rtdecode", "version": 1, "tr_s": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"protocol": "rtdecode", "version": 1, "tr_s": 1e400}', "overflows a double"),
    ],
)
def test_headers_a_strict_json_reader_refuses(header, match):
    with pytest.raises(ProtocolError, match=match):
        wire.decode([b"volume", header])
