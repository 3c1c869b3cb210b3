"""Could a low-rank model of a patch find what robust mode's neighbour fits miss?

Robust mode predicts a voxel from its own spectrum and its eight neighbours'. A
residual spread over two to four spaxels of a bright line core puts itself into
those neighbours and hides (``quality_breakdown.py``: "hidden by itself"). A
different model of a bright core is a low-rank one: the spectra of a patch of
spaxels around the voxel (5x5 spaxels, planes k-7..k+7) as a sum of ``rank``
products of a spatial map and a spectral profile (a line, its shift with a
velocity gradient, a continuum), fitted by weighted alternating least squares
(weights 1/ERR^2). A residual would then be a sparse misfit.

This script measures the two ways such a model can be used, on the benchmark's
line cubes, in units of the true noise:

* **held out**: the voxel is left out of the fit and predicted. On the
  artifact-free cube, how far off are the predictions of bright voxels (noise-free
  S/N > 10)? The 99th percentile and the largest miss.
* **in sample, robust**: every voxel is fitted, iteratively dropping entries
  beyond 4 times their row's robust scale. How far is the fit from the
  artifact-free bright voxels, and how far from the injected strong artifacts'
  voxels on bright signal (a large misfit would find them)?

Run: ``.venv/bin/python benchmarks/lowrank_patch.py [CUBE ...]`` (about 25 s a
cube), CUBE a label "kind seed N" of ``quality.py`` (default: "compact seed 0"
and "arc seed 0").
"""

import argparse
import sys
import warnings

import numpy as np
from quality import PHYSICAL, VARIANTS, layer_map_for, make_kind

RADIUS = 2          # patch of (2 RADIUS + 1)^2 spaxels
HALF = 7            # planes k-HALF..k+HALF
ITERATIONS = 25
DROP = 4.0          # robust fit: drop entries beyond DROP x their row's scale
N_CLEAN = 300       # bright artifact-free voxels sampled per cube


def patch(sci, err, lm, k, y, x):
    """The patch around voxel (k, y, x): values and errors (spaxels x planes), which
    entries hold data, and the row of the voxel's own spaxel."""
    ny, nx = lm.shape
    ys, xs = np.mgrid[max(0, y - RADIUS):min(ny, y + RADIUS + 1),
                      max(0, x - RADIUS):min(nx, x + RADIUS + 1)]
    keep = lm[ys, xs] >= 0
    ys, xs = ys[keep], xs[keep]
    rows = sci[k - HALF:k + HALF + 1][:, ys, xs].T.astype(float)
    errs = err[k - HALF:k + HALF + 1][:, ys, xs].T.astype(float)
    good = np.isfinite(rows) & np.isfinite(errs) & (errs > 0)
    centre = int(np.flatnonzero((ys == y) & (xs == x))[0])
    return np.where(good, rows, 0.0), np.where(good, errs, 1.0), good, centre


def lowrank_fit(m, e, weight, rank, robust):
    """Weighted alternating least squares ``m ~ u @ v.T`` of the given rank.

    ``weight`` (0 or 1) selects the entries fitted; with ``robust``, entries beyond
    DROP times their row's robust scale (MAD of the normalised misfits, at least 1)
    are dropped from the fourth iteration on. Returns the model.
    """
    u, _, _ = np.linalg.svd(np.where(weight > 0, m / e, 0.0), full_matrices=False)
    v = np.linalg.lstsq(u[:, :rank], np.where(weight > 0, m, 0.0), rcond=None)[0].T
    keep = np.ones_like(m)
    ridge = 1e-12 * np.eye(rank)
    for it in range(ITERATIONS):
        w = weight * keep / e ** 2
        gram = np.einsum("ij,jr,js->irs", w, v, v) + ridge
        u = np.linalg.solve(gram, np.einsum("ij,jr,ij->ir", w, v, m)[..., None])[..., 0]
        gram = np.einsum("ij,ir,is->jrs", w, u, u) + ridge
        v = np.linalg.solve(gram, np.einsum("ij,ir,ij->jr", w, u, m)[..., None])[..., 0]
        if robust and it >= 2:
            misfit = np.abs(m - u @ v.T) / e
            # each row's robust scale over its fitted entries (1 for a row without any)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                scale = 1.4826 * np.nanmedian(np.where(weight > 0, misfit, np.nan), axis=1)
            scale = np.where(np.isfinite(scale), np.maximum(scale, 1.0), 1.0)
            keep = (misfit < DROP * scale[:, None]).astype(float)
    return u @ v.T


def misfits(sci, err, true_err, lm, voxels, rank, held_out):
    """(value - model) / true noise at each voxel: the voxel held out of a plain fit,
    or fitted in sample by the robust one."""
    out = np.full(len(voxels), np.nan)
    for n, (k, y, x) in enumerate(voxels):
        if k < HALF or k + HALF >= sci.shape[0]:
            continue
        m, e, good, c = patch(sci, err, lm, k, y, x)
        weight = good.astype(float)
        if held_out:
            weight[c, HALF] = 0.0
        model = lowrank_fit(m, e, weight, rank, robust=not held_out)
        out[n] = (m[c, HALF] - model[c, HALF]) / true_err[k, y, x]
    return out


def report(label, kind, settings):
    cube = make_kind(kind, **dict(settings))
    lm, _ = layer_map_for(cube)
    true_err = cube.err.astype(float) / cube.err_scale
    with np.errstate(invalid="ignore"):
        bright = (cube.model / true_err > 10) & (lm > 0)[None]
    clean_vox = np.argwhere(bright & ~cube.artifact_mask)
    rng = np.random.default_rng(0)
    clean_vox = clean_vox[rng.choice(len(clean_vox), min(N_CLEAN, len(clean_vox)),
                                     replace=False)]
    hit = [(k, y, x) for art in cube.artifacts if abs(art.peak_sigma) > 10
           for (k, y, x), v in zip(zip(*art.voxels, strict=True), art.values, strict=True)
           if bright[k, y, x] and abs(v) / true_err[k, y, x] > 10]
    print(f"== {label}: {len(clean_vox)} bright artifact-free voxels, {len(hit)} strong "
          f"artifact voxels on bright signal")
    for rank in (2, 3, 4):
        held = np.abs(misfits(cube.clean, cube.err, true_err, lm, clean_vox, rank, True))
        fitted = np.abs(misfits(cube.clean, cube.err, true_err, lm, clean_vox, rank, False))
        found = np.abs(misfits(cube.sci, cube.err, true_err, lm, hit, rank, False))
        p99, top = np.nanpercentile(held, [99, 100])
        f99, ftop = np.nanpercentile(fitted, [99, 100])
        print(f"  rank {rank}: held out on the artifact-free cube: 99th percentile {p99:6.1f}, "
              f"largest {top:6.1f} | in sample, robust: artifact-free 99th {f99:5.1f}, largest "
              f"{ftop:5.1f}; artifact voxels beyond 5: {int(np.sum(found > 5))} of {len(hit)}"
              f" (median misfit {np.nanmedian(found) if len(hit) else np.nan:.1f})")


def main(argv=None):
    every = {f"{kind} seed 0": (kind, {"seed": 0, **PHYSICAL})
             for kind in ("arc", "compact", "ringing")}
    for key, _, settings in VARIANTS:
        for kind in ("arc", "compact", "ringing"):
            every[f"{kind} {key}"] = (kind, settings)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cubes", nargs="*", default=["compact seed 0", "arc seed 0"],
                        help=f"cube labels, of: {', '.join(every)}")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cubes if c not in every]
    if unknown:
        parser.error(f"unknown cube label(s) {unknown}; known: {', '.join(every)}")
    for label in args.cubes:
        report(label, *every[label])
    return 0


if __name__ == "__main__":
    sys.exit(main())
