"""Quality benchmark: how well each method removes known artifacts and spares real signal.

Builds seeded synthetic NIRSpec-like cubes (:mod:`layerclip.simulate`) of every kind,
makes automatic layer maps (a line-window S/N map for the line kinds, a whole-cube
continuum S/N map for the line-free ones), runs every method and prints one table
per cube kind. Then repeats paper vs robust with other generator settings, and
counts robust flags on the (already clean) MUSE UDF cube.

Run: ``.venv/bin/python benchmarks/quality.py`` (about a minute or two).
"""

import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from layerclip.clip import clip_cube
from layerclip.errors import EmptyTargetError, LayerclipWarning
from layerclip.io.cube import Cube
from layerclip.layers import auto_layer_map
from layerclip.pipeline import automatic_layer_map
from layerclip.simulate import KINDS, make_cube
from layerclip.snr import collapsed_snr

ROOT = Path(__file__).resolve().parents[1]
MUSE = ROOT.parent / "shared" / "data" / "muse_udf_subcube.fits"
DL = 0.46 / 1959  # microns per plane of the default generator (G140H-like)
NW = 800
BASE = {"shape": (NW, 43, 43), "wave_range": (1.095, 1.095 + (NW - 1) * DL)}
# Independent hits: artifacts kept apart, 6 of 120 on the brightest line's core.
PHYSICAL = {"separate": True, "on_line_fraction": 0.05}


def layer_map_for(cube):
    """Automatic layer map: line window for line kinds, whole-cube continuum otherwise."""
    c = Cube(sci=cube.sci, err=cube.err, dq=cube.dq, wavelength=cube.wavelength)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerclipWarning)
        if cube.line is not None:
            info = automatic_layer_map(c, line=cube.line, z=cube.z)
            return info.layer_map, info.planes
        planes = np.arange(cube.sci.shape[0])
        snr, _ = collapsed_snr(cube.sci, cube.err, planes, excluded=c.excluded)
        lm, _ = auto_layer_map(snr, no_data=c.excluded.all(axis=0))
        return lm, planes


def uniform(cube, lm):
    return clip_cube(cube.sci, cube.err, np.where(lm >= 0, 0, -1), method="paper")


def lacosmic(cube, lm):
    """Per-plane L.A.Cosmic (astroscrappy) with the ERR cube as variance."""
    import astroscrappy

    sci = cube.sci.copy()
    flags = np.zeros(sci.shape, bool)
    for k in range(sci.shape[0]):  # a per-plane tool: one call per plane by design
        plane = cube.sci[k]
        bad = ~np.isfinite(plane) | (lm < 0)
        data = np.where(bad, 0.0, plane).astype(np.float32)
        var = np.where(bad, 1.0, cube.err[k] ** 2).astype(np.float32)
        mask, clean = astroscrappy.detect_cosmics(data, inmask=bad, invar=var, sigclip=4.5,
                                                  objlim=5.0, satlevel=1e30, niter=4)
        mask &= ~bad
        flags[k] = mask
        sci[k][mask] = clean[mask]

    class R:
        pass

    r = R()
    r.sci, r.flags = sci, flags
    return r


METHODS = {
    "none": None,
    "uniform": uniform,
    "paper": lambda c, lm: clip_cube(c.sci, c.err, lm, method="paper"),
    "lacosmic": lacosmic,
    "robust": lambda c, lm: clip_cube(c.sci, c.err, lm, method="robust"),
    # the best any method can do: every injected voxel found and given the noise-free
    # value (its own noise is lost with it, so the flux of a faint target still moves)
    "oracle": lambda c, lm: SimpleNamespace(sci=np.where(c.artifact_mask, c.model, c.sci),
                                            flags=c.artifact_mask),
    "robust/interp": lambda c, lm: clip_cube(c.sci, c.err, lm, method="robust",
                                             replace="interp"),
}


def metrics(cube, lm, planes, sci, flags):
    # scored in units of the true noise (where the cube's ERR misstates it), and on
    # the voxels that hold data only (a cube with holes has neither SCI nor ERR there)
    given = np.isfinite(cube.sci)
    err = cube.err.astype(float) / cube.err_scale
    clean = cube.clean.astype(float)
    after = np.asarray(sci, float)
    strong_missed = strong_left = all_left = n_strong = 0
    for art in cube.artifacts:
        vox = art.voxels
        held = given[vox]
        inj = np.where(held, np.abs(art.values) / np.where(held, err[vox], 1.0), 0.0)
        left = np.abs(after[vox] - clean[vox]) / err[vox]
        left = np.where(held & np.isfinite(left), left, 0.0)
        if abs(art.peak_sigma) > 10:
            n_strong += 1
            strong_missed += bool(np.any((inj > 10) & ~flags[vox]))
            strong_left += bool(np.any(left > 10))
        all_left += bool(np.any(left > 5))
    no_art = ~cube.artifact_mask & np.isfinite(clean) & given
    false = flags & no_art
    with np.errstate(invalid="ignore"):
        on_signal = false & (cube.model / err > 10)
        change = np.abs(after - clean) / err
    damage = no_art & np.isfinite(after) & (change > 3)
    target = lm > 0
    held = given[planes][:, target]
    sub_after = np.where(held & np.isfinite(after[planes][:, target]),
                         after[planes][:, target], 0.0)
    sub_clean = np.where(held, clean[planes][:, target], 0.0)
    flux_pct = 100 * (sub_after.sum() - sub_clean.sum()) / sub_clean.sum()
    spax_err = np.sqrt((np.where(held, err[planes][:, target], 0.0) ** 2).sum(axis=0))
    worst = np.max(np.abs(sub_after.sum(axis=0) - sub_clean.sum(axis=0)) / spax_err)
    return {"n_strong": n_strong, "n_all": len(cube.artifacts), "strong_missed": strong_missed,
            "strong_left": strong_left, "all_left": all_left, "false": int(false.sum()),
            "on_signal": int(on_signal.sum()), "damage": int(damage.sum()),
            "flux_pct": flux_pct, "worst": worst}


HEADER = (f"{'method':<14}{'strong missed':>14}{'strong left':>12}{'all left':>9}"
          f"{'false flags':>12}{'on signal':>10}{'damage':>8}{'flux %':>9}{'worst spx':>10}"
          f"{'time s':>8}")


def row(name, m, dt):
    return (f"{name:<14}{m['strong_missed']:>14}{m['strong_left']:>12}{m['all_left']:>9}"
            f"{m['false']:>12}{m['on_signal']:>10}{m['damage']:>8}{m['flux_pct']:>+9.3f}"
            f"{m['worst']:>10.2f}{dt:>8.3f}")


# Generator settings of the paper-vs-robust variants: key, label, make_cube settings.
VARIANTS = [
    ("seed 1", "seed 1, narrow lines 45 km/s (undersampled), noise x2, edge noise x4",
     {"seed": 1, "line_sigma_kms": 45.0, "noise": 1.0, "edge_noise": 3.0, **PHYSICAL}),
    ("seed 2", "seed 2, broad lines 120 km/s, 200 artifacts",
     {"seed": 2, "line_sigma_kms": 120.0, "n_artifacts": 200, **PHYSICAL}),
    ("seed 3", "seed 3, targets 3x brighter",
     {"seed": 3, "peak_snr_scale": 3.0, **PHYSICAL}),
    ("stress", "seed 0, make_cube defaults: 24 artifacts piled on the line core (stress)",
     {"seed": 0}),
]

DEFAULT_SNR = {"arc": 150.0, "compact": 1500.0, "faint": 4.0, "continuum": 4.0,
               "ringing": 60.0}


def make_kind(kind, **settings):
    """The benchmark's cube of ``kind`` (``peak_snr_scale`` scales the kind's default S/N)."""
    scale = settings.pop("peak_snr_scale", None)
    if scale is not None:
        settings["peak_snr"] = DEFAULT_SNR[kind] * scale
    return make_cube(kind, **{**BASE, **settings})


def run_kind(kind, methods, **settings):
    cube = make_kind(kind, **settings)
    lm, planes = layer_map_for(cube)
    results = {}
    for name in methods:
        fn = METHODS[name]
        if fn is None:
            sci, flags = cube.sci, np.zeros(cube.sci.shape, bool)
            dt = 0.0
        else:
            r, dt = timed(fn, cube, lm)
            sci, flags = r.sci, r.flags
        results[name] = (metrics(cube, lm, planes, sci, flags), dt)
    return cube, lm, results


def timed(fn, *args):
    """``fn(*args)`` and its run time: the best of five runs when one takes under a second.

    Tens of milliseconds vary by a factor of two from run to run on a shared
    machine; the minimum is the usual estimate of what the code itself costs.
    """
    best = np.inf
    for _ in range(5):
        t = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t)
        if best > 1.0:
            break
    return result, best


def warm_up():
    """Load (or, on the first run after an install, compile) robust mode's kernels.

    Robust mode's per-voxel fits are compiled by numba and cached on disk; the
    first call in a process loads them. That one-off cost is printed here and kept
    out of the per-cube times.
    """
    cube = make_cube("compact", shape=(60, 12, 12), wave_range=BASE["wave_range"], seed=0)
    t = time.perf_counter()
    clip_cube(cube.sci, cube.err, np.zeros(cube.sci.shape[1:], np.int16), method="robust")
    return time.perf_counter() - t


def targets(results):
    """Issue-5 targets for robust against paper mode; a list of failures."""
    p, pt = results["paper"]
    r, rt = results["robust"]
    fails = []
    if r["strong_missed"] * 5 > p["strong_missed"] and r["strong_missed"] > 0:
        fails.append("strong missed")
    if r["strong_left"] * 5 > p["strong_left"] and r["strong_left"] > 0:
        fails.append("strong left")
    if r["damage"] * 10 > p["damage"] and r["damage"] > 0:
        fails.append("damage")
    if r["on_signal"] > 0:
        fails.append("flags on signal")
    if abs(r["flux_pct"]) > 0.5:
        oracle = results.get("oracle", ({},))[0].get("flux_pct", 0.0)
        # (where even the oracle misses 0.5%, the lost voxels' own noise exceeds it)
        fails.append(f"flux (oracle {oracle:+.2f}%)" if abs(oracle) > 0.5 else "flux")
    if r["worst"] > 5:
        fails.append("worst spaxel > 5")
    elif r["worst"] > 3:
        fails.append("(stretch: worst spaxel > 3)")
    if rt > 3 * pt:
        fails.append(f"time {rt / pt:.1f}x paper")
    return fails


def continuum_layer_map(sci, err, bad):
    """The automatic layer map of a real cube from its whole-band S/N map (every
    spaxel with data is sky where no target stands out); ``bad`` marks the voxels
    without usable data."""
    snr, _ = collapsed_snr(sci, err, np.arange(sci.shape[0]), excluded=bad)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LayerclipWarning)
            lm, _ = auto_layer_map(snr, no_data=bad.all(axis=0))
    except EmptyTargetError:
        lm = np.where(bad.all(axis=0), -1, 0).astype(np.int16)
    return lm


def muse_check():
    from astropy.io import fits

    if not MUSE.exists():
        print(f"MUSE check skipped: {MUSE} not found")
        return
    with fits.open(MUSE) as hdul:
        sci = np.asarray(hdul["DATA"].data, dtype=np.float32)
        err = np.sqrt(np.asarray(hdul["STAT"].data, dtype=np.float64)).astype(np.float32)
    bad = ~np.isfinite(sci) | ~np.isfinite(err)
    lm = continuum_layer_map(sci, err, bad)
    usable = int((~bad & (lm >= 0)[None]).sum())
    print(f"\nMUSE UDF subcube {sci.shape}, {usable} usable voxels, "
          f"{int((lm > 0).sum())} target spaxels (continuum S/N map)")
    for method in ("paper", "robust"):
        r, dt = timed(lambda m=method: clip_cube(sci, err, lm, method=m, excluded=bad))
        print(f"  {method:<8} {r.n_flagged:>6} flags = {1e6 * r.n_flagged / usable:8.1f} per "
              f"million voxels ({dt:.2f} s)")


def main():
    methods = list(METHODS)
    print(f"cubes: {BASE['shape']} planes x spaxels, seed 0, 120 artifacts kept apart "
          "(separate=True), 5% of them on the brightest line's core")
    print("strong = injected peak > 10 sigma; left = still > 10 (strong) or > 5 (all) sigma "
          "from the artifact-free cube; damage = voxels without artifact changed > 3 sigma;\n"
          "flux % = brightest-line flux over the target (continuum/ringing: whole band) vs "
          "artifact-free; worst spx = largest single-spaxel change in units of its error;\n"
          "time s = best of five runs (one run when it takes over a second);\n"
          "oracle = every injected voxel flagged and given its noise-free value (the floor "
          "of any method's flux error: the lost voxels' noise)")
    print(f"robust mode's compiled kernels loaded in {warm_up():.2f} s (first call in the "
          "process; compiles once after an install)\n")
    all_fails = {}
    for kind in KINDS:
        cube, lm, res = run_kind(kind, methods, seed=0, **PHYSICAL)
        m0 = res["none"][0]
        print(f"== {kind}: {m0['n_all']} artifacts, {m0['n_strong']} strong; "
              f"{int((lm > 0).sum())} target spaxels in {int(lm.max())} layers")
        print(HEADER)
        for name in methods:
            print(row(name, *res[name]))
        all_fails[f"{kind} seed 0"] = targets(res)
        print()
    for key, label, settings in VARIANTS:
        print(f"== variant: {label}")
        print(f"{'kind':<10}" + HEADER)
        for kind in KINDS:
            _, _, res = run_kind(kind, ["none", "paper", "robust", "oracle"], **settings)
            for name in ("paper", "robust", "oracle"):
                print(f"{kind:<10}" + row(name, *res[name]))
            all_fails[f"{kind} {key}"] = targets(res)
        print()
    muse_check()
    print("\nissue-5 targets for robust (vs paper) not met:")
    for key, fails in all_fails.items():
        print(f"  {key:<16} {', '.join(fails) if fails else 'all met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
