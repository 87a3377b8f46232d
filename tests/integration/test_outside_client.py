"""A client written from docs/protocol.md alone (pyzmq + numpy, no rtdecode) against `rtdecode run`.

The client sends every class of bad input the protocol must answer, interleaved with valid
volumes, and a manifest of what it sent; the test checks the decoder's answer to each: it stays
up, every bad message gets exactly one skip record naming its reason and (where readable) its
series and index, every valid volume exactly one result, every lost volume a gap record.
"""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
from helpers import collect, free_address, is_end, small_config

from rtdecode.transport.zmq import Subscriber

CLIENT = r"""
import json, sys, time
import numpy as np
import zmq

vols = np.load(sys.argv[1])
data, affine, tr = vols["data"], vols["affine"].tolist(), float(vols["tr"])
sock = zmq.Context().socket(zmq.PUSH)
sock.setsockopt(zmq.LINGER, 10000)
sock.connect(sys.argv[2])
sent, skips, gaps = [], [], []  # the manifest: valid volumes, expected refusals, expected gaps
k = 0  # which simulated volume's data goes next


def header(series, seq, session="s1", **over):
    h = {"protocol": "rtdecode", "version": 1, "kind": "volume", "session": session, "series": series,
         "seq": seq, "affine": affine, "tr_s": tr, "acq_time_s": time.time(),
         "stamps": {"acquired": time.monotonic_ns(), "sent": time.monotonic_ns()}}
    h.update(over)
    return h


def send(h, arr=None):
    global k
    if arr is None:
        arr = np.ascontiguousarray(data[k % len(data)])
        k += 1
    h = dict(h)
    h["arrays"] = [{"name": "data", "dtype": arr.dtype.name, "byteorder": "little", "shape": list(arr.shape)}]
    sock.send_multipart([b"volume", json.dumps(h).encode(), arr.tobytes()])


def good(series, seq, **over):
    send(header(series, seq, **over))
    sent.append([series, seq])


def bad(frames, reason, series=None, seq=None):
    sock.send_multipart(frames)
    skips.append([reason, series, seq])


def end(series, n_sent, session="s1"):
    h = {"protocol": "rtdecode", "version": 1, "kind": "end", "session": session, "series": series,
         "n_sent": n_sent}
    sock.send_multipart([b"end", json.dumps(h).encode()])


def raw(h, arr=None):
    arr = np.ascontiguousarray(data[0]) if arr is None else arr
    h = dict(h)
    h["arrays"] = [{"name": "data", "dtype": arr.dtype.name, "byteorder": "little", "shape": list(arr.shape)}]
    return [b"volume", json.dumps(h).encode(), arr.tobytes()]


good("A", 0)
bad([b"volume", b"[" * 100000 + b"]" * 100000], "nested too deeply")
good("A", 1)
bad(raw(header("A", 2, version=True)), "unsupported protocol version True")
bad(raw(header("A", 2, tr_s=True)), "'tr_s' must be a JSON number", "A", 2)
bad(raw(header("A", 2, tr_s="3.0")), "'tr_s' must be a JSON number", "A", 2)
strings = [[str(v) for v in row] for row in affine]
bad(raw(header("A", 2, affine=strings)), "'affine' must be a 4x4 list of numbers", "A", 2)
bad(raw(header("A", 2, session=123)), "'session' must be a JSON string", "A", 2)
h = header("A", 2); del h["kind"]
bad(raw(h), "unknown message kind None", "A", 2)
bad(raw(header("A", 2, kind="volumes")), "unknown message kind 'volumes'", "A", 2)
frames = raw(header("A", 2))
frames[1] = frames[1].replace(b'"tr_s": ' + json.dumps(tr).encode(), b'"tr_s": NaN')
bad(frames, "NaN is not a JSON number")
good("A", 2)
bad(raw(header("A", 2**40)), "jumps", "A", 2**40)
bad(raw(header("A", 2**62)), "'seq' must be an integer from 0 to", "A", 2**62)
bad(raw(header("A", 2**64)), "'seq' must be an integer from 0 to", "A", 2**64)
good("A", 3)
bad(raw(header("A", 4), np.full(data[0].shape, 3e38, np.float32)), "overflow the arithmetic", "A", 4)
good("A", 4)  # the refused index sent again, with real data: decoded
good("A", 5, stamps={"acquired": time.monotonic_ns() + 3600 * 10**9})  # a clock an hour ahead
good("A", 6, stamps={"acquired": time.monotonic_ns() - 10**18})  # a clock from another age
good("A", 7)
for seq in range(5):
    good("B", seq)  # another series: its first volume's FD is 0
good("A", 8)  # back to A: it goes on where it stopped, nothing reported missing
good("A", 9, session="s2")  # the session id changes mid-series: the series goes on
good("A", 11, session="s2")  # 10 never sent: a gap
end("ghost", 3)  # a series that never existed
skips.append(["end of series 'ghost'", None, None])
bad_end = {"protocol": "rtdecode", "version": 1, "kind": "end", "session": "s2", "series": "A", "n_sent": -4}
bad([b"end", json.dumps(bad_end).encode()], "'n_sent' must be an integer from 0", "A")
gaps += [["A", 10, 10, False], ["A", 12, 13, True]]
end("A", 14, session="s2")  # 12 and 13 were sent but lost: the tail
sock.close()
print(json.dumps({"sent": sent, "skips": skips, "gaps": gaps}))
assert "rtdecode" not in sys.modules
"""


def test_a_client_from_the_protocol_document_gets_one_answer_per_message(experiment, tmp_path, run_decoder):
    img = nib.load(experiment / "test" / "bold.nii")
    np.savez(
        tmp_path / "vols.npz",
        data=np.moveaxis(np.asarray(img.dataobj[..., :12], dtype=np.float32), -1, 0),
        affine=img.affine,
        tr=float(img.header.get_zooms()[3]),
    )
    cfg = small_config()
    cfg.run.bundle = str(experiment / "decoder")
    cfg.run.input.address, cfg.run.output.address = free_address(), free_address()
    decoder = run_decoder(cfg, "--exit-after-series", stderr=subprocess.PIPE, text=True)
    with Subscriber(cfg.run.output.address) as sub:
        collect(sub, lambda m: m.topic == "status", 60)
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, str(tmp_path / "vols.npz"), cfg.run.input.address],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert client.returncode == 0, client.stderr
        manifest = json.loads(client.stdout)
        msgs = collect(sub, is_end, 120)
    assert decoder.wait(30) == 0, decoder.stderr.read()

    skipped = [m.header for m in msgs if m.header.get("event") == "skipped"]
    assert len(skipped) == len(manifest["skips"]), [s["reason"] for s in skipped]
    for got, (reason, series, seq) in zip(skipped, manifest["skips"]):
        assert reason in got["reason"], (reason, got["reason"])
        assert (got.get("series"), got.get("seq")) == (series, seq), (reason, got)

    results = [(m.header["series"], m.header["seq"]) for m in msgs if m.topic == "ranking"]
    assert results == [tuple(s) for s in manifest["sent"]]  # exactly one result per valid volume

    gaps = [
        [m.header["series"], m.header["missing_from"], m.header["missing_to"], bool(m.header.get("at_end"))]
        for m in msgs
        if m.header.get("event") == "gap"
    ]
    assert gaps == manifest["gaps"]

    motion = {(m.header["series"], m.header["seq"]): m.header for m in msgs if m.topic == "motion"}
    assert motion[("B", 0)]["fd_mm"] == 0.0 and not motion[("B", 0)]["censored"]

    latency = {(m.header["series"], m.header["seq"]): m.header for m in msgs if m.topic == "latency"}
    assert latency[("A", 5)]["stamps_dropped"] == ["acquired"]
    assert latency[("A", 6)]["stamps_dropped"] == ["acquired"]
    assert all(v >= 0 for h in latency.values() for v in h["ms"].values())

    end = msgs[-1].header
    assert end["series"] == "A" and end["n_sent"] == 14
    # This series' own counts: A's valid volumes, its refusals, and the 3 volumes it lost.
    n_a = sum(1 for s, _ in manifest["sent"] if s == "A")
    a_skips = sum(1 for _, s, _ in manifest["skips"] if s == "A")
    assert end["series_counts"] == {
        "received": n_a + a_skips,
        "processed": n_a,
        "skipped": a_skips,
        "dropped": 3,
    }
    p95 = end["latency_ms"]["end_to_end"]["p95"]
    assert 0 <= p95 < 60_000  # the impossible stamps are not in the summary
