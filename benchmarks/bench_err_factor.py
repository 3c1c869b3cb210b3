"""How far ERR understates the noise, as robust mode measures it, on every benchmark cube.

Robust mode multiplies ERR by the measured ratio of the noise to ERR where that
exceeds 1.05 (``layerclip.robust.measure_err_factor``). This script prints the
ratio before that tolerance for the cubes of ``quality.py`` and
``quality_unseen.py`` (automatic layer maps, as there), grouped by whether their
ERR is right, and for the real cubes in ``../shared/data``; and how long the
measurement takes against a whole robust run.

Run: .venv/bin/python benchmarks/bench_err_factor.py (about a minute)
"""

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402
import quality_unseen  # noqa: E402

from layerclip.clip import array_reader, clip_cube, cube_err_factor, cube_noise_ratio  # noqa: E402
from layerclip.errors import LayerclipWarning  # noqa: E402
from layerclip.robust import (  # noqa: E402
    compact_planes,
    measure_err_factor,
    neighbour_table,
    noise_columns,
    noise_planes,
)
from layerclip.simulate import KINDS  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = ["muse_udf_subcube.fits", "kb191227_00112_icubes.fits", "kb191227_00113_icubes.fits",
        "miri_mrs_simulated_s3d.fits"]


def synthetic_settings():
    """(label, settings) of every cube setting of quality.py and quality_unseen.py."""
    yield "seed 0", {"seed": 0, **quality.PHYSICAL}
    yield "stress", {"seed": 0}
    for label, _, settings in quality.VARIANTS:
        yield label, settings
    yield from quality_unseen.SETTINGS.items()


def _seconds(fn, *args, **kwargs):
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main():
    quality.warm_up()
    right, under, spent = [], [], []
    for label, settings in synthetic_settings():
        for kind in KINDS:
            cube = quality.make_kind(kind, **dict(settings))
            layer_map, _ = quality.layer_map_for(cube)
            read = array_reader(cube.sci, cube.err)
            nw = cube.sci.shape[0]
            ratio = cube_noise_ratio(read, nw, layer_map)
            factor = cube_err_factor(read, nw, layer_map)
            truth = 1 / cube.err_scale
            (right if truth == 1 else under).append((ratio, factor, truth, label, kind))
            if label == "seed 0":
                # best of 21: what the measurement costs through the generic reader
                # (several blocks, or a file), from a block's own arrays (a cube
                # clipped in one block, as clip_cube does), and a whole robust run
                index, _ = neighbour_table(layer_map)
                y, e = (compact_planes(a.reshape(nw, -1), index) for a in (cube.sci, cube.err))
                usable = np.isfinite(y) & np.isfinite(e) & (e > 0)
                cols = np.searchsorted(index, noise_columns(layer_map))
                planes = noise_planes(nw, cols.size)
                spent.append([min(_seconds(*call) for _ in range(21)) for call in (
                    (cube_err_factor, read, nw, layer_map),
                    (measure_err_factor, y, e, usable, planes, cols),
                    (clip_cube, cube.sci, cube.err, layer_map))])
    for name, rows in (("ERR right", right), ("ERR 0.7 x the noise", under)):
        ratios = np.array([r[0] for r in rows])
        changed = sum(r[1] != 1.0 for r in rows)
        print(f"{name}: {len(rows)} cubes, measured noise / ERR {ratios.min():.3f}-"
              f"{ratios.max():.3f} (median {np.median(ratios):.3f}, true "
              f"{rows[0][2]:.3f}); ERR rescaled in {changed}")
    worst = max(right, key=lambda r: r[0])
    print(f"  highest with a right ERR: {worst[0]:.3f} ({worst[4]}, {worst[3]})")
    spent = np.array(spent) * 1e3
    print(f"cost on the seed-0 cubes: measuring it from a block's arrays takes "
          f"{spent[:, 1].min():.2f}-{spent[:, 1].max():.2f} ms, through the generic reader "
          f"(several blocks, files) {spent[:, 0].min():.2f}-{spent[:, 0].max():.2f} ms; "
          f"a whole robust run {spent[:, 2].min():.1f}-{spent[:, 2].max():.1f} ms")
    print("\nreal cubes (layer map: every spaxel with data is sky):")
    from layerclip.io import read_cube

    for name in REAL:
        path = DATA / name
        if not path.exists():
            print(f"  {name}: skipped, not found in {DATA}")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LayerclipWarning)
            cube = read_cube(path)
        layer_map = np.where(cube.excluded.all(axis=0), -1, 0).astype(np.int16)
        read = array_reader(cube.sci, cube.err, cube.excluded)
        nw = cube.shape[0]
        result = clip_cube(cube.sci, cube.err, layer_map, excluded=cube.excluded)
        print(f"  {name} {cube.shape}: noise / ERR {cube_noise_ratio(read, nw, layer_map):.3f}"
              f", err_factor used {result.params['err_factor']}, {result.n_flagged} flags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
