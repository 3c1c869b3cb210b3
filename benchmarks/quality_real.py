"""Quality on real cubes with injected artifacts: backgrounds no generator made.

``quality.py`` and ``quality_unseen.py`` score the methods on synthetic cubes, whose
noise, line shapes and PSF are what the generator makes them. Here the backgrounds
are real: the MUSE UDF subcube (faint galaxies, a deep stack) and the two KCWI
exposures of the SDSS0958 quasar field (a bright compact quasar, zero-padded
slicer edges, variance from their own pipeline), from ``../shared/data``. These
were already clean (the MUSE cube is a 10 h stack; the KCWI exposures were
cosmic-ray cleaned in 2-D), so each cube as read is the artifact-free truth.

Artifacts are injected with the generator's model
(:func:`layerclip.simulate.inject_artifacts`: 1-3 planes by 1-4 spaxels, peaks
3-3000 times the voxel's ERR, log-uniform, 15% negative, kept apart), one per
5000 voxels with data, 10% of them starting on the target's brightest voxels.
The layer map is the automatic one from the whole-band S/N map, as for the
synthetic continuum cubes. Scored as ``quality.py`` scores them, in units of the
cube's ERR (the true noise is not known: ``bench_err_factor.py`` measures
noise/ERR of 1.03, 1.07 and 0.99 on these three), with the flux over the whole
band and "on signal" meaning the real cube's value above 10 ERR.

Run: ``.venv/bin/python benchmarks/quality_real.py`` (about half a minute).
"""

import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from quality import HEADER, metrics, row, targets, timed, warm_up

from layerclip.clip import clip_cube
from layerclip.errors import EmptyTargetError, LayerclipWarning
from layerclip.io import read_cube
from layerclip.layers import auto_layer_map
from layerclip.simulate import inject_artifacts
from layerclip.snr import collapsed_snr

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CUBES = {"MUSE UDF": "muse_udf_subcube.fits", "KCWI 00112": "kb191227_00112_icubes.fits",
         "KCWI 00113": "kb191227_00113_icubes.fits"}
SEEDS = (0, 1, 2)
VOXELS_PER_ARTIFACT = 5000
ON_SIGNAL_FRACTION = 0.1
METHODS = ("none", "paper", "robust", "oracle")


def load(path):
    """SCI and ERR (float32, NaN where a voxel holds no usable data), the excluded
    voxels and the automatic layer map of a real cube."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerclipWarning)
        cube = read_cube(path)
    bad = cube.excluded | ~np.isfinite(cube.sci) | ~(cube.err > 0)
    sci = np.where(bad, np.nan, cube.sci).astype(np.float32)
    err = np.where(bad, np.nan, cube.err).astype(np.float32)
    snr, _ = collapsed_snr(sci, err, np.arange(sci.shape[0]), excluded=bad)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LayerclipWarning)
            lm, _ = auto_layer_map(snr, no_data=bad.all(axis=0))
    except EmptyTargetError:
        lm = np.where(bad.all(axis=0), -1, 0).astype(np.int16)
    return sci, err, bad, lm


def injected(sci, err, bad, lm, seed):
    """The cube with artifacts, as the namespace ``quality.metrics`` scores.

    Artifacts hit spaxels with data on every plane (the layer map's clipped
    spaxels); the on-signal ones start on the brightest layer's spaxels at the
    planes where those are brightest (their median S/N in its top quarter), or,
    kept apart from the others, on any voxel of the target above 10 ERR.
    """
    rng = np.random.default_rng(seed)
    footprint = (lm >= 0) & ~bad.any(axis=0)
    n_usable = int((~bad & (lm >= 0)[None]).sum())
    n_artifacts = max(1, round(n_usable / VOXELS_PER_ARTIFACT))
    core = np.argwhere((lm == lm.max()) & footprint) if lm.max() > 0 else np.empty((0, 2), int)
    core_planes = signal_voxels = None
    if len(core):
        with np.errstate(invalid="ignore", divide="ignore"):
            level = np.nanmedian((sci / err)[:, core[:, 0], core[:, 1]], axis=1)
        inner = np.arange(1, sci.shape[0] - 3)
        core_planes = inner[level[inner] >= np.nanpercentile(level[inner], 75)]
        with np.errstate(invalid="ignore", divide="ignore"):
            bright = (sci / err > 10) & ((lm > 0) & footprint)[None]
        bright[[0, -3, -2, -1]] = False
        signal_voxels = np.argwhere(bright)
        if not len(signal_voxels):
            signal_voxels = None
            core_planes = None
    values, artifacts = inject_artifacts(
        rng, np.nan_to_num(err.astype(float)), footprint, n_artifacts=n_artifacts,
        n_on_signal=round(ON_SIGNAL_FRACTION * n_artifacts), core_spaxels=core,
        core_planes=core_planes, signal_voxels=signal_voxels, separate=True)
    mask = np.zeros(sci.shape, bool)
    for art in artifacts:
        mask[art.voxels] = True
    return SimpleNamespace(sci=(sci + values).astype(np.float32), err=err, clean=sci,
                           model=sci, err_scale=1.0, artifacts=artifacts, artifact_mask=mask)


def run(name, sci, err, bad, lm, seed):
    cube = injected(sci, err, bad, lm, seed)
    planes = np.arange(sci.shape[0])
    results = {}
    for method in METHODS:
        if method == "none":
            out, flags, dt = cube.sci, np.zeros(sci.shape, bool), 0.0
        elif method == "oracle":
            out, flags, dt = np.where(cube.artifact_mask, sci, cube.sci), cube.artifact_mask, 0.0
        else:
            r, dt = timed(lambda m=method: clip_cube(cube.sci, err, lm, method=m,
                                                     excluded=bad))
            out, flags = r.sci, r.flags
        results[method] = (metrics(cube, lm, planes, out, flags), dt)
    return results


def main():
    warm_up()
    print(f"real backgrounds from {DATA}, artifacts injected (one per {VOXELS_PER_ARTIFACT} "
          f"voxels with data, {ON_SIGNAL_FRACTION:.0%} on the target's brightest voxels, "
          "kept apart); seeds " + ", ".join(map(str, SEEDS)))
    print("columns as in quality.py, in units of the cube's ERR; flux % over the whole band "
          "and the target; oracle = every injected voxel flagged and given its value "
          "before injection\n")
    print(f"{'cube':<12}{'seed':<6}" + HEADER)
    fails_by_run = {}
    totals = {"paper": np.zeros(6, int), "robust": np.zeros(6, int)}
    columns = ("strong_missed", "strong_left", "all_left", "false", "on_signal", "damage")
    for label, filename in CUBES.items():
        path = DATA / filename
        if not path.exists():
            print(f"{label}: skipped, {path} not found")
            continue
        sci, err, bad, lm = load(path)
        for seed in SEEDS:
            res = run(label, sci, err, bad, lm, seed)
            m0 = res["none"][0]
            for method in METHODS[1:]:
                print(f"{label:<12}{seed:<6}" + row(method, *res[method]))
            for method in totals:
                totals[method] += [res[method][0][c] for c in columns]
            fails_by_run[f"{label} seed {seed} ({m0['n_all']} artifacts, "
                         f"{m0['n_strong']} strong; {int((lm > 0).sum())} target spaxels)"] = \
                targets(res)
    print("\nissue-5 targets for robust (vs paper) not met:")
    for key, fails in fails_by_run.items():
        print(f"  {key:<60} {', '.join(fails) if fails else 'all met'}")
    print("\ntotals (" + ", ".join(c.replace("_", " ") for c in columns) + "):")
    for method, t in totals.items():
        print(f"  {method:<8}" + " ".join(f"{v:>6}" for v in t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
