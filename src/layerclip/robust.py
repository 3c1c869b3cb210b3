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


def _wsum(array, kernel):
    # correlate1d: each output is a fixed-order sum over the kernel, so a plane's
    # result does not depend on where the block starts (bit-for-bit block equality).
    return ndimage.correlate1d(array, kernel, axis=0, mode="constant", cval=0.0)


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
    data = np.where(valid, values, np.inf)
    data.sort(axis=0)
    count = valid.sum(axis=0)
    lo = np.clip((count - 1) // 2, 0, None)
    hi = np.clip(count // 2, 0, None)
    a = np.take_along_axis(data, lo[None], axis=0)[0]
    b = np.take_along_axis(data, hi[None], axis=0)[0]
    with np.errstate(invalid="ignore"):
        out = 0.5 * (a + b)
    out[count == 0] = np.nan
    return out


def _predict(y, e, good, neighbours, *, half_window, leave_out, model_error, min_points=6,
             template=None, fit_ok=None, eval_ok=None, strict_ok=None, spread_weight=1.0,
             check_planes=3, fit_scale=True):
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
    for i in range(n_cand):
        nb = neighbours[i]
        has = nb >= 0
        if not has.any():
            continue
        idx = np.where(has, nb, 0)
        x = np.where(has[None], t0[:, idx], 0.0)
        gx = eval_ok[:, idx] & has[None]
        ex2 = np.where(gx, e2_all[:, idx], 0.0)
        d, ed2, gd = _derivative(x, ex2, gx)
        fx = fit_ok[:, idx] & has[None]
        w = w_s * (fx & _shift(fx, 1, False) & _shift(fx, -1, False))
        sw = _wsum(w, kernel)
        wx, wd, wy = w * x, w * d, w * y0
        sx, sd, sy = _wsum(wx, kernel), _wsum(wd, kernel), _wsum(wy, kernel)
        sxx, sdd, sxd = _wsum(wx * x, kernel), _wsum(wd * d, kernel), _wsum(wx * d, kernel)
        sxy, sdy = _wsum(wx * y0, kernel), _wsum(wd * y0, kernel)
        syy = _wsum(wy * y0, kernel)
        with np.errstate(invalid="ignore", divide="ignore"):
            inv = 1.0 / np.maximum(sw, 1.0)
            xm, dm, ym = sx * inv, sd * inv, sy * inv
            cxx = sxx - sx * xm
            cdd = sdd - sd * dm
            cxd = sxd - sx * dm
            cxy = sxy - sx * ym
            cdy = sdy - sd * ym
            det = cxx * cdd - cxd * cxd
            # full fit where the 2x2 system is well conditioned, scale-only otherwise
            ok2 = det > 1e-9 * np.maximum(cxx * cdd, 1e-300)
            a2 = (cxy * cdd - cdy * cxd) / np.where(ok2, det, 1.0)
            c2 = (cdy * cxx - cxy * cxd) / np.where(ok2, det, 1.0)
            a1 = cxy / np.where(cxx > 0, cxx, 1.0)
            a = np.where(ok2, a2, np.where(cxx > 0, a1, 0.0))
            c = np.where(ok2, c2, 0.0)
            zx, zd = x - xm, d - dm
            pred = ym + a * zx + c * zd
            # Noise carried in by the neighbour's own voxels, plus the uncertainty of
            # the fit at this point: large where the fit extrapolates (e.g. the
            # spaxel's own line core is flagged and only its wings constrain a, c).
            lever = np.where(ok2, (zx * zx * cdd - 2 * zx * zd * cxd + zd * zd * cxx)
                             / np.where(ok2, det, 1.0),
                             np.where(cxx > 0, zx * zx / np.where(cxx > 0, cxx, 1.0), 0.0))
            # The fit's own residual scale, where it exceeds the noise: a spaxel
            # the neighbour's spectrum does not describe in this window (another
            # shape, a residual spoiling the fit) gets a wide prediction interval.
            rss = (syy - sy * ym) - a * cxy - c * cdy
            dof = np.maximum(sw - 3.0, 1.0)
            resid2 = np.maximum(rss / dof, e2_here) if fit_scale else e2_here
            var = a * a * ex2 + c * c * ed2 + resid2 * (inv + lever) \
                + np.maximum(resid2 - e2_here, 0.0)
        cand[i] = pred
        cvar[i] = var
        cvalid[i] = gx & gd & (sw >= min_points)
        cstrict[i] = cvalid[i] & strict_ok[:, idx]
    use_strict = cstrict.sum(axis=0) >= 2
    cvalid = np.where(use_strict[None], cstrict, cvalid)
    value = masked_median(cand, cvalid)
    variance = masked_median(cvar, cvalid)
    n_valid = cvalid.sum(axis=0)
    # Candidates that disagree (contaminated or extrapolating fits, line shapes
    # that change between spaxels, e.g. an undersampled line shifted by a velocity
    # gradient) make the prediction uncertain. Their disagreement is systematic,
    # not independent noise, so the median is uncertain by about their robust
    # spread itself (not spread / sqrt(n)).
    spread = 1.4826 * masked_median(np.abs(cand - value[None]), cvalid)
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
    stack_miss = np.stack([_shift(miss, o, np.nan) for o in offsets])
    stack_exp = np.stack([_shift(expect, o, np.nan) for o in offsets])
    ok = np.isfinite(stack_miss)
    typical = masked_median(stack_miss, ok)
    typical_exp = masked_median(stack_exp, ok)
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
                      spread_weight=DEFAULTS["spread_weight"]):
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
                                       spread_weight=1.0, check_planes=0, fit_scale=False)
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
                                       check_planes=CHECK_PLANES)
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
