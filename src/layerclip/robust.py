"""Robust mode: per-voxel predictions from neighbouring spectra, in units of ERR.

Paper mode compares every voxel with the median of its S/N layer in the same
plane, with a standard-deviation scale. That cannot flag a lone outlier in a
layer of fewer than ~25 spaxels, mixes spaxels of different noise, and treats
real structure inside a layer (velocity gradients, a range of S/N) as outliers.
Robust mode instead predicts every voxel from the spectra around it and asks
whether the voxel is consistent with its prediction, in units of its own noise.

For a voxel at plane ``k`` of spaxel ``s`` and each of its (up to eight) spatial
neighbours ``n``, the spectrum of ``s`` is fitted, over the planes
``k-H..k+H`` *except* ``k-L..k+L``, as

    s(j) ~ b + a * n(j) + c * n'(j)

where ``n'`` is the neighbour's derivative along wavelength. ``a`` scales the
neighbour's line (or continuum) to the spaxel's brightness and ``c`` absorbs a
sub-plane velocity shift or a phase shift of resampling "ringing". The fit
evaluated at ``k`` is one candidate prediction; the prediction is the median of
the candidates, so a cosmic-ray residual in up to three neighbours cannot drag
it. Real emission is shared by neighbouring spaxels (the PSF spans several) and
spans several planes (the line spread function), so the prediction follows it;
a residual confined to 1-3 planes and 1-4 spaxels is absent from the fit window
and from most neighbours, so it stands out. Where no neighbour is usable, the
spaxel's own mean over the window is the prediction.

The normalised residual is

    rho = (s - p) / sqrt(ERR^2 + var(p))

where ``var(p)`` collects everything that makes the prediction uncertain: the
noise the neighbours carry in; the fit's extrapolation (leverage) and, in pass
two, its own residual scale where the neighbour does not describe the window;
the spread of the candidates (neighbours on different sides of a velocity
gradient, or an undersampled line, disagree: their spread itself, not spread /
sqrt(n), because the disagreement is systematic); a fraction ``model_error`` of
the prediction's local gradient plus curvature along wavelength; and, in pass
two, how badly the prediction missed the spaxel's own voxels on the three planes
each side (beyond their noise). Where no neighbour is usable the spaxel's own
window mean is the prediction, uncertain by the spectrum's scatter in the window.
``rho`` is divided by a robust (MAD) scale measured in each plane over all usable
spaxels (median-filtered over a few planes, never below 1), which protects
against ERR arrays that underestimate the noise. A voxel is flagged when
``|rho| > sigma``. Pass one (conservative, no empirical terms) finds the gross
outliers; pass two repeats the fits without them and their adjacent planes
(neighbour spectra repaired with pass one's prediction, candidates next to a
flag used only when fewer than two others exist). After each pass, flags grow
to adjacent planes and adjacent spaxels whose ``rho`` has the same sign and
exceeds ``grow_sigma``.

Every statistic uses only planes within a fixed distance (:func:`robust_halo`),
so processing a cube in blocks of planes padded by that halo gives the same
result, bit for bit, as processing it whole. Windowed sums are computed with
:func:`scipy.ndimage.correlate1d`, whose sum for one output plane does not depend
on where the array starts (a running cumulative sum would).
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

__all__ = ["RobustPrediction", "clip_block_robust", "robust_halo", "neighbour_table",
           "masked_median", "DEFAULTS"]

DEFAULTS = {
    "sigma": 5.0,
    "grow_sigma": 3.0,
    "half_window": 7,
    "leave_out": 0,
    "model_error": 0.1,
    "spread_weight": 1.0,
    "scale_window": 3,
    "grow": 2,
}

# Pass one's fractional model error; pass two's comes from the data (CHECK_PLANES).
FIRST_PASS_ERROR = 0.1
CHECK_PLANES = 3

# Chunks of the neighbour fits: planes per chunk (each chunk re-reads the window
# half-width on either side, so not too few) and elements (planes x spaxels) per
# chunk, which bounds the fit's temporaries (~30 float64 buffers per chunk).
_CHUNK_ELEMENTS = 262144
_CHUNK_PLANES = 384

_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def robust_halo(*, half_window=DEFAULTS["half_window"], scale_window=DEFAULTS["scale_window"],
                grow=DEFAULTS["grow"], interp_gap=0, **_ignored):
    """Planes on each side that the robust result for one plane depends on.

    Each of the two passes reads ``half_window + 5`` planes (fit window,
    derivative, structure term, empirical model error), smooths its per-plane scale over
    ``scale_window`` planes and grows flags by ``grow`` planes; pass two also
    guards one plane around pass one's flags; interpolated replacement reads
    ``interp_gap`` planes more.
    """
    # one pass: fit window + derivative (H+1), structure term (+1), empirical model
    # error from the prediction on the 3 planes each side (+3), plane scale (S),
    # growing (g); pass two reads pass one's flags through the fit window plus a
    # one-plane guard.
    one_pass = int(half_window) + 2 + 3 + int(scale_window) + int(grow)
    return 2 * one_pass + 2 + int(interp_gap)


def neighbour_table(layer_map):
    """Compact indices of the clipped spaxels and of their eight neighbours.

    Parameters
    ----------
    layer_map : ndarray of int, shape (ny, nx)

    Returns
    -------
    index : ndarray of int, shape (m,)
        Flattened spatial index of every spaxel with ``layer_map >= 0``.
    neighbours : ndarray of int, shape (8, m)
        Position in ``index`` of each neighbour, -1 where the neighbour is outside
        the image or excluded.
    """
    ny, nx = layer_map.shape
    keep = layer_map.ravel() >= 0
    index = np.flatnonzero(keep)
    position = np.full(ny * nx, -1, dtype=np.int64)
    position[index] = np.arange(index.size)
    y, x = np.divmod(index, nx)
    neighbours = np.full((len(_OFFSETS), index.size), -1, dtype=np.int64)
    for i, (dy, dx) in enumerate(_OFFSETS):
        yy, xx = y + dy, x + dx
        inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        neighbours[i, inside] = position[yy[inside] * nx + xx[inside]]
    return index, neighbours


class RobustPrediction:
    """Prediction, its variance and the normalised residual of one pass (compact layout)."""

    def __init__(self, value, variance, rho, scale):
        self.value = value
        self.variance = variance
        self.rho = rho
        self.scale = scale


def _window_kernel(half_window, leave_out):
    offsets = np.arange(-half_window, half_window + 1)
    return (np.abs(offsets) > leave_out).astype(float)


def _wsum(array, kernel, out=None):
    # correlate1d: each output is a fixed-order sum over the kernel, so a plane's
    # result does not depend on where the block starts (bit-for-bit block equality).
    return ndimage.correlate1d(array, kernel, axis=0, output=out, mode="constant", cval=0.0)


def _shift(array, step, fill=0.0):
    """``out[k] = array[k + step]`` along axis 0, ``fill`` beyond the ends."""
    out = np.full_like(array, fill)
    if step > 0:
        out[:-step] = array[step:]
    elif step < 0:
        out[-step:] = array[:step]
    else:
        out[:] = array
    return out


def _shift_stack(array, steps):
    """``np.stack([_shift(array, s, np.nan) for s in steps])`` without the temporaries."""
    out = np.full((len(steps),) + array.shape, np.nan)
    for j, step in enumerate(steps):
        if step > 0:
            out[j, :-step] = array[step:]
        elif step < 0:
            out[j, -step:] = array[:step]
        else:
            out[j] = array
    return out


def _derivative(x, ex2, good):
    """Derivative along wavelength: central where both sides are good, one-sided else.

    Returns the derivative, its noise variance and where it is defined.
    """
    up_ok, down_ok = _shift(good, -1, False), _shift(good, 1, False)
    up, down = _shift(x, -1), _shift(x, 1)
    eup, edown = _shift(ex2, -1), _shift(ex2, 1)
    both = up_ok & down_ok
    only_up = up_ok & ~down_ok & good
    only_down = down_ok & ~up_ok & good
    d = np.where(both, 0.5 * (up - down),
                 np.where(only_up, up - x, np.where(only_down, x - down, 0.0)))
    ed2 = np.where(both, 0.25 * (eup + edown),
                   np.where(only_up, eup + ex2, np.where(only_down, edown + ex2, 0.0)))
    return d, ed2, both | only_up | only_down


def masked_median(values, valid):
    """Median along axis 0 of ``values`` where ``valid``; NaN where nothing is valid."""
    return _masked_median(values, valid, _median_ranks(valid))


def _median_ranks(valid):
    """Count of valid values along axis 0 and the ranks of the two middle ones."""
    count = valid.sum(axis=0)
    lo = np.clip((count - 1) // 2, 0, None)
    hi = np.clip(count // 2, 0, None)
    return count, lo[None], hi[None]


def _masked_median(values, valid, ranks, overwrite=False):
    """:func:`masked_median` with precomputed ranks; ``overwrite`` sorts ``values`` in place."""
    count, lo, hi = ranks
    if overwrite:
        data = values
        np.copyto(data, np.inf, where=~valid)
    else:
        data = np.where(valid, values, np.inf)
    data.sort(axis=0)
    a = np.take_along_axis(data, lo, axis=0)[0]
    b = np.take_along_axis(data, hi, axis=0)[0]
    with np.errstate(invalid="ignore"):
        out = 0.5 * (a + b)
    out[count == 0] = np.nan
    return out


def _two_medians(first, second, valid, threads):
    """Masked medians of two disposable stacks sharing ``valid`` (sorted in place)."""
    ranks = _median_ranks(valid)
    if threads > 1:
        with ThreadPoolExecutor(max_workers=2) as pool:
            later = pool.submit(_masked_median, second, valid, ranks, True)
            return _masked_median(first, valid, ranks, True), later.result(), ranks
    return (_masked_median(first, valid, ranks, True),
            _masked_median(second, valid, ranks, True), ranks)


def _predict(y, e, good, neighbours, *, half_window, leave_out, model_error, min_points=6,
             template=None, fit_ok=None, eval_ok=None, strict_ok=None, spread_weight=1.0,
             check_planes=3, fit_scale=True, threads=1):
    """One pass of neighbour-template predictions for a (planes, m) block.

    Parameters
    ----------
    y, e : ndarray, shape (n_planes, m)
    good : ndarray of bool
        Voxels a spaxel's own fit may use.
    template : ndarray, optional
        Neighbour spectra (default ``y``; later passes repair flagged voxels).
    fit_ok : ndarray of bool, optional
        Template voxels the fits may use (default ``good``).
    eval_ok : ndarray of bool, optional
        Template voxels a candidate may be evaluated at (default ``fit_ok``).
    strict_ok : ndarray of bool, optional
        Preferred evaluation voxels: where at least two candidates are strict, only
        strict candidates count (default ``eval_ok``).
    threads : int
        Threads for the neighbour fits (chunks of planes and spaxels) and the paired
        medians; the result is the same, bit for bit, for any value.
    """
    kernel = _window_kernel(half_window, leave_out)
    w_s = good.astype(float)
    y0 = np.where(good, y, 0.0)
    if template is None:
        template = y
    fit_ok = good if fit_ok is None else fit_ok
    eval_ok = fit_ok if eval_ok is None else eval_ok
    strict_ok = eval_ok if strict_ok is None else strict_ok
    t0 = np.where(eval_ok, template, 0.0)
    n_cand = neighbours.shape[0]
    cand = np.empty((n_cand,) + y.shape)
    cvar = np.empty((n_cand,) + y.shape)
    cvalid = np.zeros((n_cand,) + y.shape, dtype=bool)
    cstrict = np.zeros((n_cand,) + y.shape, dtype=bool)
    e2 = np.where(good, e * e, 0.0)
    e2_here = np.where(np.isfinite(e), e * e, 0.0)
    e2_all = np.where(eval_ok, e * e, 0.0)
    # Everything that depends on the neighbour spectrum alone (its derivative, its
    # noise, where a fit may use it) is computed once for all spaxels and gathered
    # per neighbour. The fits then run over chunks of planes (each padded by the
    # window half-width, so every windowed sum is the same fixed-order sum as over
    # the whole block), which keeps the temporaries small and in cache. The
    # arithmetic, and so every bit of the result, is that of a whole-block evaluation.
    d_all, ed2_all, gd_all = _derivative(t0, e2_all, eval_ok)
    fs_all = fit_ok & _shift(fit_ok, 1, False) & _shift(fit_ok, -1, False)
    n_planes, m = y.shape
    pad = kernel.size // 2
    chunk = _CHUNK_PLANES
    col_chunk = max(64, _CHUNK_ELEMENTS // (chunk + 2 * pad))
    gathers = []
    for i in range(n_cand):
        has = neighbours[i] >= 0
        if has.any():
            missing = ~has
            gathers.append((i, np.where(has, neighbours[i], 0),
                            missing if missing.any() else None))

    def fit_chunk(start):
        # one chunk of planes and spaxels, with its own buffers (chunks may run in
        # threads and write disjoint parts of cand, cvar, cvalid, cstrict)
        k0, c0 = start
        k1, c1 = min(k0 + chunk, n_planes), min(c0 + col_chunk, m)
        lo, hi = max(k0 - pad, 0), min(k1 + pad, n_planes)
        nr, nc = k1 - k0, c1 - c0
        inner, cols = slice(k0 - lo, k1 - lo), slice(c0, c1)
        ws, y0s = w_s[lo:hi, cols], y0[lo:hi, cols]
        e2h = e2_here[k0:k1, cols]
        S = {name: np.empty((hi - lo, nc)) for name in  # noqa: N806 - slab buffers
             ("w", "wx", "wd", "wy", "t", "sw", "sx", "sd", "sy", "sxx", "sdd", "sxd",
              "sxy", "sdy", "syy")}
        R = {name: np.empty((nr, nc)) for name in  # noqa: N806 - inner-plane buffers
             ("t", "u", "inv", "xm", "dm", "ym", "p", "det", "a", "c", "cxxs", "wx", "wd")}
        B = {name: np.empty((nr, nc), dtype=bool)  # noqa: N806
             for name in ("ok2", "pos", "nok2", "npos")}
        for i, idx_all, missing_all in gathers:
            idx = idx_all[cols]
            missing = None
            if missing_all is not None and missing_all[cols].any():
                missing = missing_all[cols]

            def gather(array, fill, rows, idx=idx, missing=missing):
                out = array[rows, idx]
                if missing is not None:
                    out[:, missing] = fill
                return out

            slab, rows = slice(lo, hi), slice(k0, k1)
            x = gather(t0, 0.0, slab)
            d = gather(d_all, 0.0, slab)
            fx = gather(fs_all, False, slab)
            w, wx, wd, wy, ts = S["w"], S["wx"], S["wd"], S["wy"], S["t"]
            np.multiply(ws, fx, out=w)
            np.multiply(w, x, out=wx)
            np.multiply(w, d, out=wd)
            np.multiply(w, y0s, out=wy)
            sums = {}
            for name, src in (("sw", w), ("sx", wx), ("sd", wd), ("sy", wy)):
                sums[name] = _wsum(src, kernel, S[name])[inner]
            for name, p1, p2 in (("sxx", wx, x), ("sdd", wd, d), ("sxd", wx, d),
                                 ("sxy", wx, y0s), ("sdy", wd, y0s), ("syy", wy, y0s)):
                sums[name] = _wsum(np.multiply(p1, p2, out=ts), kernel, S[name])[inner]
            sw, sx, sd, sy = sums["sw"], sums["sx"], sums["sd"], sums["sy"]
            sxx, sdd, sxd = sums["sxx"], sums["sdd"], sums["sxd"]
            sxy, sdy, syy = sums["sxy"], sums["sdy"], sums["syy"]
            x, d = x[inner], d[inner]
            gx = gather(eval_ok, False, rows)
            ex2 = gather(e2_all, 0.0, rows)
            ed2 = gather(ed2_all, 0.0, rows)
            gd = gather(gd_all, False, rows)
            t, u = R["t"], R["u"]
            with np.errstate(invalid="ignore", divide="ignore"):
                inv = np.divide(1.0, np.maximum(sw, 1.0, out=R["inv"]), out=R["inv"])
                xm = np.multiply(sx, inv, out=R["xm"])
                dm = np.multiply(sd, inv, out=R["dm"])
                ym = np.multiply(sy, inv, out=R["ym"])
                # the centred sums overwrite the raw ones (each raw sum is used once)
                cxx = np.subtract(sxx, np.multiply(sx, xm, out=t), out=sxx)
                cdd = np.subtract(sdd, np.multiply(sd, dm, out=t), out=sdd)
                cxd = np.subtract(sxd, np.multiply(sx, dm, out=t), out=sxd)
                cxy = np.subtract(sxy, np.multiply(sx, ym, out=t), out=sxy)
                cdy = np.subtract(sdy, np.multiply(sd, ym, out=t), out=sdy)
                p = np.multiply(cxx, cdd, out=R["p"])
                det = np.subtract(p, np.multiply(cxd, cxd, out=t), out=R["det"])
                # full fit where the 2x2 system is well conditioned, scale-only otherwise
                np.maximum(p, 1e-300, out=p)
                np.multiply(1e-9, p, out=p)
                ok2 = np.greater(det, p, out=B["ok2"])
                nok2 = np.logical_not(ok2, out=B["nok2"])
                np.putmask(det, nok2, 1.0)  # det is only used as the safe divisor below
                pos = np.greater(cxx, 0, out=B["pos"])
                npos = np.logical_not(pos, out=B["npos"])
                cxxs = R["cxxs"]  # cxx where > 0, else 1 (safe divisor)
                np.copyto(cxxs, cxx)
                np.putmask(cxxs, npos, 1.0)
                # a = ok2 ? (cxy*cdd - cdy*cxd)/det : (pos ? cxy/cxx : 0)
                a = np.divide(cxy, cxxs, out=R["a"])
                np.putmask(a, npos, 0.0)
                np.multiply(cxy, cdd, out=t)
                np.subtract(t, np.multiply(cdy, cxd, out=u), out=t)
                np.divide(t, det, out=t)
                np.copyto(a, t, where=ok2)
                # c = ok2 ? (cdy*cxx - cxy*cxd)/det : 0
                c = np.multiply(cdy, cxx, out=R["c"])
                np.subtract(c, np.multiply(cxy, cxd, out=u), out=c)
                np.divide(c, det, out=c)
                np.putmask(c, nok2, 0.0)
                zx = np.subtract(x, xm, out=x)  # x, d: per-neighbour gathers, free to reuse
                zd = np.subtract(d, dm, out=d)
                pred = np.multiply(a, zx, out=cand[i, k0:k1, cols])
                np.add(ym, pred, out=pred)
                np.add(pred, np.multiply(c, zd, out=t), out=pred)
                # Noise carried in by the neighbour's own voxels, plus the uncertainty of
                # the fit at this point: large where the fit extrapolates (e.g. the
                # spaxel's own line core is flagged and only its wings constrain a, c).
                zx2 = np.multiply(zx, zx, out=R["wx"])
                lever = np.multiply(zx2, cdd, out=R["wd"])
                np.multiply(2, zx, out=t)
                np.multiply(t, zd, out=t)
                np.multiply(t, cxd, out=t)
                np.subtract(lever, t, out=lever)
                np.multiply(zd, zd, out=t)
                np.multiply(t, cxx, out=t)
                np.add(lever, t, out=lever)
                np.divide(lever, det, out=lever)
                np.divide(zx2, cxxs, out=t)
                np.putmask(t, npos, 0.0)
                np.copyto(lever, t, where=nok2)
                # The fit's own residual scale, where it exceeds the noise: a spaxel
                # the neighbour's spectrum does not describe in this window (another
                # shape, a residual spoiling the fit) gets a wide prediction interval.
                if fit_scale:
                    rss = np.subtract(syy, np.multiply(sy, ym, out=t), out=syy)
                    np.subtract(rss, np.multiply(a, cxy, out=t), out=rss)
                    np.subtract(rss, np.multiply(c, cdy, out=t), out=rss)
                    dof = np.subtract(sw, 3.0, out=u)
                    np.maximum(dof, 1.0, out=dof)
                    resid2 = np.divide(rss, dof, out=rss)
                    np.maximum(resid2, e2h, out=resid2)
                else:
                    resid2 = e2h
                var = np.multiply(a, a, out=cvar[i, k0:k1, cols])
                np.multiply(var, ex2, out=var)
                np.multiply(c, c, out=t)
                np.multiply(t, ed2, out=t)
                np.add(var, t, out=var)
                np.add(inv, lever, out=t)
                np.multiply(resid2, t, out=t)
                np.add(var, t, out=var)
                np.subtract(resid2, e2h, out=t)
                np.maximum(t, 0.0, out=t)
                np.add(var, t, out=var)
            valid = np.greater_equal(sw, min_points, out=cvalid[i, k0:k1, cols])
            valid &= gx
            valid &= gd
            np.logical_and(valid, gather(strict_ok, False, rows), out=cstrict[i, k0:k1, cols])

    starts = [(k0, c0) for k0 in range(0, n_planes, chunk) for c0 in range(0, m, col_chunk)]
    if threads > 1 and len(starts) > 1:
        # chunks write disjoint planes of cand/cvar/cvalid/cstrict; numpy and
        # correlate1d release the GIL, and the result does not depend on threads
        with ThreadPoolExecutor(max_workers=int(threads)) as pool:
            list(pool.map(fit_chunk, starts))
    else:
        for start in starts:
            fit_chunk(start)
    use_strict = cstrict.sum(axis=0) >= 2
    cvalid = np.where(use_strict[None], cstrict, cvalid)
    ranks = _median_ranks(cvalid)
    if threads > 1:
        with ThreadPoolExecutor(max_workers=2) as pool:
            later = pool.submit(_masked_median, cvar, cvalid, ranks, True)
            value = _masked_median(cand, cvalid, ranks)
            variance = later.result()
    else:
        value = _masked_median(cand, cvalid, ranks)
        variance = _masked_median(cvar, cvalid, ranks, overwrite=True)
    n_valid = ranks[0]
    # Candidates that disagree (contaminated or extrapolating fits, line shapes
    # that change between spaxels, e.g. an undersampled line shifted by a velocity
    # gradient) make the prediction uncertain. Their disagreement is systematic,
    # not independent noise, so the median is uncertain by about their robust
    # spread itself (not spread / sqrt(n)).
    dev = np.subtract(cand, value[None], out=cand)  # cand is not needed any more
    spread = 1.4826 * _masked_median(np.abs(dev, out=dev), cvalid, ranks, overwrite=True)
    cand = cvar = dev = cvalid = cstrict = None  # noqa: F841 - free the candidate stacks
    variance = variance + np.where(n_valid > 0, spread_weight * spread * spread, 0.0)
    # fit-mean noise: the window mean of the spaxel itself (same for every candidate)
    kernel_own = kernel
    sw_own = _wsum(w_s, kernel_own)
    sy_own = _wsum(y0, kernel_own)
    se_own = _wsum(e2, kernel_own)
    syy_own = _wsum(y0 * y0, kernel_own)
    with np.errstate(invalid="ignore", divide="ignore"):
        own = sy_own / sw_own
        # No neighbour to follow the spectrum's shape: the own mean is uncertain by
        # the spectrum's scatter in the window (real structure included).
        scatter = np.maximum(syy_own / sw_own - own * own, 0.0)
        own_var = se_own / (sw_own * sw_own) + scatter
    few = n_valid < 1
    value = np.where(few, own, value)
    variance = np.where(few, own_var, variance)
    # model error: neighbouring spectra never match a bright narrow line exactly
    up, down = _shift(value, -1, np.nan), _shift(value, 1, np.nan)
    up = np.where(np.isfinite(up), up, value)
    down = np.where(np.isfinite(down), down, value)
    structure = 0.5 * np.abs(up - down) + np.abs(up - 2 * value + down)
    variance = variance + (model_error * structure) ** 2
    # Empirical model error: how well the prediction matched the spaxel's own
    # voxels on the planes around (median of |y - p| over k-3..k+3 without k,
    # robust to a residual on up to two of them), beyond what their noise explains.
    # A line whose shape the neighbours cannot reproduce (undersampled, shifted)
    # misses on the planes beside the peak as well, and is then not clipped.
    if check_planes <= 0:
        return value, variance
    miss = np.where(good & np.isfinite(value), np.abs(y - value), np.nan)
    expect = np.where(good, e * e + variance, np.nan)
    offsets = [o for o in range(-check_planes, check_planes + 1) if o != 0]
    stack_miss = _shift_stack(miss, offsets)
    stack_exp = _shift_stack(expect, offsets)
    ok = np.isfinite(stack_miss)
    typical, typical_exp, _ = _two_medians(stack_miss, stack_exp, ok, threads)
    with np.errstate(invalid="ignore"):
        excess = (1.4826 * typical) ** 2 - typical_exp
    variance = variance + np.where(np.isfinite(excess) & (excess > 0), excess, 0.0)
    return value, variance


def _plane_scale(rho, good, scale_window):
    """Robust scale of ``rho`` per plane (MAD over usable spaxels), smoothed, floored at 1."""
    n = good.sum(axis=1)
    data = np.where(good, np.abs(rho), np.inf)
    data.sort(axis=1)
    mid = np.take_along_axis(data, np.clip((n - 1) // 2, 0, None)[:, None], axis=1)[:, 0]
    scale = np.where(n >= 8, mid / 0.6745, 1.0)
    scale = np.where(np.isfinite(scale), scale, 1.0)
    if scale_window > 0:
        scale = ndimage.median_filter(scale, size=2 * scale_window + 1, mode="nearest")
    return np.maximum(scale, 1.0)


def clip_block_robust(y, e, usable, neighbours, *, sigma=DEFAULTS["sigma"],
                      grow_sigma=DEFAULTS["grow_sigma"], half_window=DEFAULTS["half_window"],
                      leave_out=DEFAULTS["leave_out"], model_error=DEFAULTS["model_error"],
                      scale_window=DEFAULTS["scale_window"], grow=DEFAULTS["grow"],
                      spread_weight=DEFAULTS["spread_weight"], threads=1):
    """Robust-mode flags for a block of spectra in compact (planes, spaxels) layout.

    Parameters
    ----------
    y, e : ndarray, shape (n_planes, m)
        Flux and ERR of the spaxels to clip (float64).
    usable : ndarray of bool, shape (n_planes, m)
        True where a voxel holds usable data (finite SCI, finite positive ERR, not
        excluded). Unusable voxels are never flagged nor used.
    neighbours : ndarray of int, shape (8, m)
        From :func:`neighbour_table`.
    sigma : float
        Threshold on the normalised residual (default 5).
    grow_sigma : float
        Threshold for growing flags to adjacent planes and spaxels (default 3).
    half_window, leave_out : int
        Fit window ``k-H..k+H`` without ``k-L..k+L`` (defaults 7 and 0).
    model_error : float
        Fraction of the local line gradient plus curvature added in quadrature to
        the prediction's uncertainty (default 0.1).
    scale_window : int
        Half-width, in planes, of the median filter on the per-plane scale.
    grow : int
        Growing steps (each one plane / one spaxel).
    threads : int
        Threads sharing the neighbour fits over chunks of planes (default 1). The
        result does not depend on it, bit for bit.

    Returns
    -------
    flags : ndarray of bool
    prediction : RobustPrediction
        Of the second pass (flags of the first pass left out of the fits).
    """
    flags = np.zeros(y.shape, dtype=bool)
    pred = None
    template = None
    for _ in range(2):
        # Fits leave out flagged voxels and, as a guard, the planes next to them
        # (residual tails below the growing threshold). Neighbour spectra keep
        # every usable voxel, flagged ones repaired with the previous prediction,
        # so a spaxel whose neighbours were all hit still has candidates.
        guard = flags | _shift(flags, 1, False) | _shift(flags, -1, False)
        good = usable & ~guard
        if pred is None:
            # Pass one only has to find the gross outliers that would spoil the
            # fits of pass two: a conservative uncertainty (the full candidate
            # spread and a large model error), no empirical term (fits spoiled by an
            # outlier miss on every plane of their window, and their residual
            # scale is inflated by it).
            value, variance = _predict(y, e, good, neighbours, half_window=half_window,
                                       leave_out=leave_out, model_error=FIRST_PASS_ERROR,
                                       spread_weight=1.0, check_planes=0, fit_scale=False,
                                       threads=threads)
        else:
            # Neighbour spectra: flagged voxels repaired with the previous prediction;
            # fits avoid flags and their neighbourhood (plane and spaxel), and
            # candidates evaluated next to a flag count only when fewer than two
            # others are available.
            repaired = flags & np.isfinite(pred.value)
            template = np.where(repaired, pred.value, y)
            near = usable & ~(flags | _near(flags, neighbours))
            value, variance = _predict(y, e, good, neighbours, half_window=half_window,
                                       leave_out=leave_out, model_error=model_error,
                                       template=template, fit_ok=near, eval_ok=usable,
                                       strict_ok=near, spread_weight=spread_weight,
                                       check_planes=CHECK_PLANES, threads=threads)
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = (y - value) / np.sqrt(e * e + variance)
        ok = usable & np.isfinite(rho)
        rho = np.where(ok, rho, 0.0)
        scale = _plane_scale(rho, good & ok, scale_window)
        rho = rho / scale[:, None]
        flags = ok & (np.abs(rho) > sigma)
        flags = _grow(flags, rho, ok, neighbours, grow_sigma, grow)
        pred = RobustPrediction(value, variance, rho, scale)
    return flags, pred


def _grow(flags, rho, ok, neighbours, grow_sigma, steps):
    """Add voxels next to flags (plane or spaxel) whose ``rho`` has the same sign, > grow_sigma."""
    for _ in range(int(steps)):
        near_pos = _near(flags & (rho > 0), neighbours)
        near_neg = _near(flags & (rho < 0), neighbours)
        new = ok & ~flags & ((near_pos & (rho > grow_sigma)) | (near_neg & (rho < -grow_sigma)))
        if not new.any():
            break
        flags = flags | new
    return flags


def _near(mask, neighbours):
    """Voxels adjacent to ``mask`` along wavelength (+-1 plane) or in space (8 neighbours)."""
    out = _shift(mask, 1, False) | _shift(mask, -1, False)
    for nb in neighbours:
        has = nb >= 0
        if has.any():
            src = np.where(has, nb, 0)
            out |= mask[:, src] & has[None]
    return out
