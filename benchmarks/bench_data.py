"""Times loading real Fashion-MNIST: cold (fresh cache) and warm (from the cache).

Cold: gunzip, validate and hash the four IDX files, then write the array cache.
Warm: read the CRC-checked array cache. "Warm, new process" is the realistic
second run of a script (OS page cache warm, process memory fresh). Each figure is
the median of ``--repeats`` runs, each cold run with an empty cache directory.

Usage: python benchmarks/bench_data.py [--repeats 5] [--data-dir DIR]
Writes benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _report_util import json_block, md_table  # noqa: E402

_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from lrjax._src import data
start = time.perf_counter()
data.load_dataset(data_dir={data_dir!r}, download=False)
print(time.perf_counter() - start)
"""


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/data.json"))
    args = parser.parse_args(argv)
    from lrjax._src import data

    def load():
        return data.load_dataset(data_dir=args.data_dir, download=False)

    cold, warm, warm_child = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            os.environ["LRJAX_CACHE_DIR"] = os.path.join(tmp, f"run{i}")
            cold.append(_time(load))
            warm.append(min(_time(load) for _ in range(3)))
            child = _CHILD.format(root=str(ROOT), data_dir=args.data_dir)
            out = subprocess.run(
                [sys.executable, "-c", child],
                capture_output=True,
                text=True,
                check=True,
                env=os.environ.copy(),
            )
            warm_child.append(float(out.stdout))
        cache_file = Path(tmp, "run0", "fashion_mnist", "fashion_mnist.arrays")
        cache_bytes = cache_file.stat().st_size
        ds = load()
        source = data._locate(data._SPECS["fashion_mnist"], args.data_dir)[0]

    result = {
        "dataset": "fashion_mnist",
        "source_dir": str(next(iter(source.values())).parent),
        "shapes": {
            k: list(getattr(ds, k).shape) for k in ("x_train", "x_val", "x_test")
        },
        "cache_file_bytes": cache_bytes,
        "repeats": args.repeats,
        "cold_s_median": statistics.median(cold),
        "warm_s_median": statistics.median(warm),
        "warm_new_process_s_median": statistics.median(warm_child),
        "cold_s": cold,
        "warm_s": warm,
        "warm_new_process_s": warm_child,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
    }
    print(f"source:             {result['source_dir']}")
    print(f"cold load:          {result['cold_s_median'] * 1e3:8.1f} ms (median)")
    print(f"warm load:          {result['warm_s_median'] * 1e3:8.1f} ms (median)")
    print(f"warm, new process:  {result['warm_new_process_s_median'] * 1e3:8.1f} ms")
    print(f"machine:            {result['machine']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


# --- what benchmarks/report.py stitches into the documents -----------------------


def markdown(d: dict) -> str:
    """The ``data`` block: the dataset's load times, cold and warm."""
    rows = [
        ["cold (gunzip, validate, hash, write cache)", d["cold_s_median"]],
        ["warm, same process", d["warm_s_median"]],
        [
            "warm, new process (a second run of a script)",
            d["warm_new_process_s_median"],
        ],
    ]
    m = d["machine"]
    return md_table(["load", "time"], [[w, f"{1000 * s:.0f} ms"] for w, s in rows]) + (
        f"\n\nMedians of {d['repeats']}; {d['dataset']} from `{d['source_dir']}`, "
        f"a cache file of {d['cache_file_bytes'] / 1e6:.0f} MB; {m['processor']}, "
        f"{m['cpu_count']} CPUs, Python {m['python']}, numpy {m['numpy']}."
    )


BLOCKS = {"data": json_block("data", markdown)}


if __name__ == "__main__":
    raise SystemExit(main())
