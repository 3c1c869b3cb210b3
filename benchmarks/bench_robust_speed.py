"""Robust mode's run time against paper mode's on the arc cubes of ``quality.py``.

The arc settings are where robust mode is slowest relative to paper mode (most
voxels on bright lines, each fitted from its neighbours' spectra). For each, both
modes run on the same cube and automatic layer map, interleaved, eleven times;
the minimum of each is printed with their ratio (issue 5's target: at most 3), and
the share of robust's time spent in its per-voxel predictions
(``robust_fits.predict_voxels``) and in its screen.

Run: .venv/bin/python benchmarks/bench_robust_speed.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402

from layerclip import robust, robust_passes  # noqa: E402
from layerclip.clip import clip_cube  # noqa: E402

SETTINGS = [("arc seed 0", quality.PHYSICAL),
            *[(f"arc {label}", settings) for label, _, settings in quality.VARIANTS
              if label.startswith("seed")]]
REPEATS = 11


def stage_times(cube, layer_map):
    """One robust run: its seconds in all, and in ``_predict`` and ``_screen``."""
    spent = {"_predict": 0.0, "_screen": 0.0}
    modules = {"_predict": robust_passes, "_screen": robust}
    originals = {name: getattr(modules[name], name) for name in spent}

    def timed(name):
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = originals[name](*args, **kwargs)
            spent[name] += time.perf_counter() - start
            return out
        return call

    try:
        for name in spent:
            setattr(modules[name], name, timed(name))
        start = time.perf_counter()
        clip_cube(cube.sci, cube.err, layer_map, method="robust")
        total = time.perf_counter() - start
    finally:
        for name, fn in originals.items():
            setattr(modules[name], name, fn)
    return total, spent


def main():
    print(f"warm-up (kernel load): {quality.warm_up():.2f} s")
    print(f"{'setting':12s} {'paper ms':>9s} {'robust ms':>10s} {'ratio':>6s} "
          f"{'predict %':>10s} {'screen %':>9s}")
    worst = 0.0
    for label, settings in SETTINGS:
        cube = quality.make_kind("arc", **settings)
        layer_map, _ = quality.layer_map_for(cube)
        paper = float("inf")
        robust_run = (float("inf"), {})
        for _ in range(REPEATS):
            start = time.perf_counter()
            clip_cube(cube.sci, cube.err, layer_map, method="paper")
            paper = min(paper, time.perf_counter() - start)
            robust_run = min(robust_run, stage_times(cube, layer_map), key=lambda t: t[0])
        total, spent = robust_run
        ratio = total / paper
        worst = max(worst, ratio)
        print(f"{label:12s} {paper * 1e3:9.1f} {total * 1e3:10.1f} {ratio:6.2f} "
              f"{spent['_predict'] / total * 100:10.0f} {spent['_screen'] / total * 100:9.0f}")
    print(f"largest ratio: {worst:.2f} (minimum of {REPEATS} interleaved runs per mode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
