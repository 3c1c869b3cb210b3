"""Run time on the small MUSE UDF cube, with and without fresh memory on every call.

On the 500 x 30 x 30 MUSE cube robust mode works on float64 arrays of 3.6 MB (the
block's SCI and ERR and the screen's residual). In a process that has handled
nothing larger, glibc's malloc sets its mmap threshold at about that size, so
those arrays are mapped afresh on every call, and their pages are faulted in
again each time. A process that has handled a larger cube first keeps them on
its heap. This script runs both cases, each in a fresh Python process, and
prints, per call (best of six), the run time and the minor page faults
(``getrusage``) of paper and robust mode.

Run: ``.venv/bin/python benchmarks/bench_page_faults.py``
"""

import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quality  # noqa: E402
import quality_real  # noqa: E402

from layerclip.clip import clip_cube  # noqa: E402

CASES = {"alone": "MUSE cube only",
         "after": "after one call on a larger synthetic cube (800 x 43 x 43)"}


def measure(case):
    """Time paper and robust mode on the MUSE cube in this process; print one line."""
    quality.warm_up()
    if case == "after":
        big = quality.make_kind("arc", seed=0, **quality.PHYSICAL)
        lm_big, _ = quality.layer_map_for(big)
        clip_cube(big.sci, big.err, lm_big, method="robust")
        del big
    loaded = quality_real.load(quality_real.DATA / quality_real.CUBES["MUSE UDF"])
    cube, lm, _ = quality_real.build(loaded, None, None, 0)
    best = {}
    for method in ("paper", "robust"):
        best[method] = (np.inf, 0)
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            clip_cube(cube.sci, cube.err, lm, method=method, excluded=loaded[2])
            seconds = time.perf_counter() - start
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            best[method] = min(best[method], (seconds, faults))
    print(f"{CASES[case]:<58} "
          + "; ".join(f"{m} {1e3 * t:6.1f} ms, {f:5d} faults" for m, (t, f) in best.items())
          + f"; ratio {best['robust'][0] / best['paper'][0]:.1f}")


def main():
    path = quality_real.DATA / quality_real.CUBES["MUSE UDF"]
    if not path.exists():
        print(f"skipped: {path} not found")
        return 0
    print("MUSE UDF subcube (500, 30, 30) with injected artifacts (quality_real.py seed 0), "
          "per call, best of six in a fresh process:")
    for case in CASES:
        subprocess.run([sys.executable, __file__, case], check=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        measure(sys.argv[1])
    else:
        sys.exit(main())
