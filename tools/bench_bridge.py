"""Cost of turning scanner files into volumes, per export format (the bridge's share of a volume).

    python tools/bench_bridge.py [--repeats 5] [--json PATH]

For every volume of each test export (Siemens mosaic, XA enhanced, XA interoperability gzipped
and plain, GE per-slice), two times from the moment its last file is complete: the last file's
``Assembler.add`` (read, check, assemble the volume; what the bridge adds after the export), and
all its files' ``add`` (the bridge's whole work for the volume, most of it done while later slices
are still being written). Baseline in the same process: ``pydicom.dcmread`` of the same files
with their pixels decoded, the floor of any Python DICOM reader. Medians and p99 in ms over
``repeats`` passes (files in the page cache).
"""

import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from rtdecode.apps.replay import volume_file_groups
from rtdecode.scanner.assemble import Assembler

DATA = Path(__file__).parents[1] / "tests" / "data"


def _exports(tmp: Path) -> dict[str, Path]:
    plain = tmp / "interop-plain"
    plain.mkdir()
    for p in sorted((DATA / "siemens-xa30-interop").glob("*.gz")):
        (plain / p.name.removesuffix(".gz")).write_bytes(gzip.decompress(p.read_bytes()))
    mosaic = tmp / "mosaic"
    shutil.copytree(DATA / "siemens", mosaic, ignore=shutil.ignore_patterns("*.partial"))
    return {
        "siemens mosaic": mosaic,
        "XA enhanced": DATA / "siemens-xa30-enhanced",
        "XA interop .gz": DATA / "siemens-xa30-interop",
        "XA interop": plain,
        "GE per-slice": DATA / "ge",
    }


def _read(path: Path) -> None:
    with gzip.open(path) if path.name.endswith(".gz") else open(path, "rb") as f:
        pydicom.dcmread(f).pixel_array  # noqa: B018


def stats(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in _exports(Path(tmp)).items():
            groups = [g.files for g in volume_file_groups(folder)]
            last, whole, floor = [], [], []
            for _ in range(args.repeats):
                asm = Assembler()
                for files in groups:
                    t0 = time.perf_counter_ns()
                    for p in files[:-1]:
                        asm.add(p)
                    t1 = time.perf_counter_ns()
                    assert len(asm.add(files[-1])) == 1
                    t2 = time.perf_counter_ns()
                    last.append((t2 - t1) / 1e6)
                    whole.append((t2 - t0) / 1e6)
                    t3 = time.perf_counter_ns()
                    for p in files:
                        _read(p)
                    floor.append((time.perf_counter_ns() - t3) / 1e6)
            out[name] = {
                "files_per_volume": len(groups[0]),
                "last_file_to_volume": stats(last),
                "all_files": stats(whole),
                "baseline_pydicom_read": stats(floor),
            }
            r, lv = out[name], out[name]["last_file_to_volume"]
            print(
                f"{name:16} {len(groups[0]):3d} files/vol  last file → volume "
                f"{lv['p50_ms']:7.2f} ms (p99 {lv['p99_ms']:7.2f})"
                f"  all files {r['all_files']['p50_ms']:7.2f} ms"
                f"  baseline pydicom read {r['baseline_pydicom_read']['p50_ms']:7.2f} ms"
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
