"""Robust mode: each voxel judged against a prediction from its neighbours' spectra.

Paper mode compares every voxel with the median of its S/N layer in the same plane,
with a standard-deviation scale. That cannot flag a lone outlier in a layer of fewer
than ~25 spaxels, mixes spaxels of different noise, and treats real structure inside
a layer (velocity gradients, a range of S/N) as outliers. Robust mode asks instead
whether a voxel agrees with what its surroundings predict, in units of its own noise.

It works in two stages, so that the careful part runs only where it is needed.

**Screen (every voxel).** A cosmic-ray residual spans 1-3 planes, a real line or
continuum many. Each voxel is compared with the median of its own spectrum at
``-3, -2, +2, +3`` planes (a baseline that ignores anything three planes wide or
narrower)::

    r = (x - baseline) / ERR

and ``r`` is divided by its robust scale in each plane (MAD over the sky spaxels,
median-filtered along wavelength, never below the value ERR implies), which protects
against an ERR array that underestimates the noise. Where the spectrum is faint and
smooth this is already a sharp test. A voxel becomes a *candidate* for the careful
test when ``|r|`` exceeds ``candidate_sigma`` or its baseline is brighter than
``bright_snr`` x ERR (on a bright line or continuum the baseline cannot follow the
spectrum's shape, so the screen alone decides nothing there).

**Prediction (candidates only).** Real emission is shared by neighbouring spaxels
(the PSF spans several) and has the same line profile there, shifted a little by
velocity gradients; a residual in 1-4 spaxels is absent from most neighbours. Over
the planes ``k-H..k+H`` except ``k`` itself, the candidate's spectrum is fitted by
weighted least squares (weights 1/ERR^2) as a combination of five spectra built
from its eight neighbours::

    x(j) ~ c0 + c1 * edge(j) + c2 * diag(j) + c3 * (E - W)(j) + c4 * (N - S)(j)

``edge`` and ``diag`` are the summed spectra of the four edge and four corner
neighbours (together they follow the spaxel's brightness and the PSF's curvature);
the two differences carry the spatial gradient, and so the sub-plane line shift of
a velocity gradient. The fit evaluated at ``k`` is the prediction. Its variance is
the fit's propagated noise (leverage times the reduced chi-square, at least 1)
plus ``model_error`` times the excess, beyond noise, of the window's leave-one-out
(PRESS) residuals (their mean, or the worst of the two planes either side of
``k``): where the neighbours do not describe the spectrum (an undersampled line
core, a strong velocity gradient) the voxel is judged against a correspondingly
wider interval. Three safeguards keep one residual from faking the prediction:

* the fit is also made without the planes on either side of ``k`` (the tails of a
  residual spanning 2-3 planes), and the more precise of the two is kept (on a
  bright spectrum only where the first fit misses a plane next to ``k`` by more
  than 5 ERR: elsewhere the second would extrapolate a sharp peak from its wings
  and undershoot it); each
  fit drops, once, a window point it misses by more than 4 ERR and four times its
  typical miss; voxels that stand out of a faint spectrum beyond ``sigma`` in the
  screen, unless most neighbours stand out with them (a faint narrow line), are
  left out of every window;
* neighbours that stand out from their own spectrum on plane ``k`` (the screen
  beyond ``candidate_sigma``; on a bright spectrum also beyond four times the
  neighbours' typical value), when they are a minority, are left out of the basis
  (a line would show in most of them, a residual hits a few);
* where the neighbours hold no signal on plane ``k`` (median below 3 ERR), the
  median over neighbours of single-neighbour fits ``b + a n + c n'`` (without the
  planes next to ``k``, leaving out neighbours that extrapolate) replaces the joint
  fit when the two disagree beyond their uncertainties or the median is the more
  precise: a joint fit on noise follows any residual its neighbours share.

The normalised residual is ``z = (x - p) / sqrt(ERR^2 + var(p)) / scale``, and a
voxel is flagged when ``|z| > sigma``; where no fit was made the screen's ``r``
serves as ``z`` (on bright spectra, a voxel that cannot be fitted is left alone).

**Passes and growing.** Flags grow to adjacent planes and spaxels whose ``z``
has the same sign and exceeds ``grow_sigma`` (residuals often span 2-3 planes and
several spaxels). Then, ``passes - 1`` times, every candidate near a flag is fitted
again with the flagged voxels left out of its own
window and repaired (by their prediction) in its neighbours' spectra, so one
residual cannot hide or fake another; growing is repeated. On bright spectra a
voxel stays flagged only if the first pass agrees (a later fit, with fewer planes,
may misjudge real structure).

The layer map still decides what is clipped (``-1`` spaxels are never touched nor
used as neighbours), but no group statistic is used: a layer of any size can be
clipped, and a spaxel placed in the "wrong" layer does no harm.

Every statistic for a plane uses only planes within :func:`robust_halo`, and no
sum depends on where a block starts, so clipping blocks padded by the halo gives
the whole-cube result bit for bit.
"""

import numpy as np
from scipy import ndimage

__all__ = ["RobustPrediction", "clip_block_robust", "robust_halo", "neighbour_table",
           "masked_median", "DEFAULTS"]

DEFAULTS = {
    "sigma": 5.0,
    "grow_sigma": 3.5,
    "half_window": 7,
    "model_error": 2.0,
    "scale_window": 3,
    "grow": 2,
    "passes": 3,
    "candidate_sigma": 3.5,
    "bright_snr": 10.0,
}

# (dy, dx) of the eight neighbours, in the order of neighbour_table's rows.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_EDGE = (1, 3, 4, 6)
_DIAG = (0, 2, 5, 7)
# Basis weights of the neighbours: rows are edge, diag, E - W, N - S.
_BASIS = np.zeros((4, 8))
_BASIS[0, list(_EDGE)] = 1.0
_BASIS[1, list(_DIAG)] = 1.0
_BASIS[2, 4], _BASIS[2, 3] = 1.0, -1.0
_BASIS[3, 6], _BASIS[3, 1] = 1.0, -1.0
# Planes of the spectral baseline, and the variance of a median of four unit normals.
_BASELINE_OFFSETS = (-3, -2, 2, 3)
_MEDIAN4_VAR = 0.2975
# Most sky spaxels a plane's scale is measured on (every n-th, fixed by position).
_SCALE_SPAXELS = 256
_MIN_FIT_POINTS = 8
# Neighbours whose median |value| / ERR on the plane is below this hold no signal.
_QUIET = 3.0
# Planes either side of a voxel whose leave-one-out misfit bounds its model error.
_NEAR_PLANES = 2
# A miss of the planes next to a bright voxel beyond this (in ERR) marks a residual's tail.
_TAIL_SIGMA = 5.0


def robust_halo(*, half_window=DEFAULTS["half_window"], scale_window=DEFAULTS["scale_window"],
                grow=DEFAULTS["grow"], passes=DEFAULTS["passes"], interp_gap=0, **_ignored):
    """Planes on each side that the robust result for one plane depends on.

    The first pass reads the fit window (``half_window``) or the baseline and its
    smoothed plane scale (``3 + scale_window``), whichever is wider, and its flags
    grow ``grow`` planes; every later pass reads the flags and predictions of the
    one before through its fit window and grows again; flagged voxels are fitted once
    more for their replacement value (the fit window and a one-plane guard around
    flags); interpolated replacement reads ``interp_gap`` planes more.
    """
    h, g = int(half_window), int(grow)
    first = max(h, max(_BASELINE_OFFSETS) + int(scale_window)) + g
    return first + (int(passes) - 1) * (h + g) + h + 2 + int(interp_gap)


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
    """Prediction, its variance and the normalised residual (compact layout).

    ``value`` and ``variance`` are NaN where no prediction was fitted (voxels the
    screen settled); ``rho`` is the normalised residual used for every decision;
    ``scale`` the per-plane robust scale.
    """

    def __init__(self, value, variance, rho, scale):
        self.value = value
        self.variance = variance
        self.rho = rho
        self.scale = scale


def masked_median(values, valid):
    """Median along axis 0 of ``values`` where ``valid``; NaN where nothing is valid."""
    count = valid.sum(axis=0)
    data = np.where(valid, values, np.inf)
    data.sort(axis=0)
    lo = np.clip((count - 1) // 2, 0, None)[None]
    hi = np.clip(count // 2, 0, None)[None]
    with np.errstate(invalid="ignore"):
        out = 0.5 * (np.take_along_axis(data, lo, axis=0)[0]
                     + np.take_along_axis(data, hi, axis=0)[0])
    out[count == 0] = np.nan
    return out


def _spectral_baseline(y, usable):
    """Median of each spaxel's usable values at planes -3, -2, +2, +3 (NaN if none)."""
    n = y.shape[0]
    pad = max(abs(d) for d in _BASELINE_OFFSETS)
    padded = np.full((n + 2 * pad,) + y.shape[1:], np.nan)
    np.copyto(padded[pad:pad + n], y, where=usable)
    padded[pad:pad + n][~usable] = np.nan
    vals = [padded[pad + d:pad + d + n] for d in _BASELINE_OFFSETS]
    hi = np.maximum(np.maximum(vals[0], vals[1]), np.maximum(vals[2], vals[3]))
    lo = np.minimum(np.minimum(vals[0], vals[1]), np.minimum(vals[2], vals[3]))
    median = vals[0] + vals[1]
    median += vals[2]
    median += vals[3]
    median -= hi
    median -= lo
    median *= 0.5
    # where a value is missing (cube ends, unusable voxels) the median of the rest
    ks, ss = np.nonzero(np.isnan(median))
    if ks.size:
        part = np.stack([v[ks, ss] for v in vals])
        finite = np.isfinite(part)
        count = finite.sum(axis=0)
        total = np.where(finite, part, 0.0).sum(axis=0)
        with np.errstate(invalid="ignore"):
            top = np.fmax.reduce(part, axis=0)
            bottom = np.fmin.reduce(part, axis=0)
            median[ks, ss] = np.select(
                [count == 4, count == 3, count == 2, count == 1],
                [0.5 * (total - top - bottom), total - top - bottom, 0.5 * total, total],
                np.nan)
    return median


def _plane_scale(r, ok, sky, scale_window):
    """Robust scale of the screen residual per plane (MAD over sky spaxels), at least 1."""
    cols = np.flatnonzero(sky) if sky.sum() >= 16 else np.arange(r.shape[1])
    cols = cols[:: max(1, cols.size // _SCALE_SPAXELS)]
    data = np.where(ok[:, cols], np.abs(r[:, cols]), np.nan)
    enough = np.isfinite(data).sum(axis=1) >= 8
    mad = _nanmedian_rows(data) / 0.6745
    scale = np.where(enough & np.isfinite(mad), mad / np.sqrt(1 + _MEDIAN4_VAR), 1.0)
    if scale_window > 0:
        scale = ndimage.median_filter(scale, size=2 * int(scale_window) + 1, mode="nearest")
    return np.maximum(scale, 1.0)


def _predict(y, e, fit_ok, template, template_ok, neighbours, ks, ss, *, half_window,
             model_error, screen=None, bright=None, candidate_sigma=3.5):
    """Neighbour-basis predictions for the voxels ``(ks, ss)`` of a compact block.

    Parameters
    ----------
    y, e : ndarray, shape (n_planes, m)
        Flux and ERR.
    fit_ok : ndarray of bool
        Voxels a spaxel's own fit may use.
    template, template_ok : ndarray
        Neighbour spectra and where they are usable; a neighbour is used for a
        voxel only if it is usable on every plane of the window.
    ks, ss : ndarray of int
        Planes and spaxels to predict.
    screen, bright : ndarray, optional
        The screen's normalised residual and where spectra are bright. Neighbours
        that stand out on the voxel's plane (beyond ``candidate_sigma`` on a faint
        spectrum; on a bright one, also beyond four times the neighbours' typical
        value) are left out of the basis when they are a minority.

    Returns
    -------
    value, variance : ndarray
        Prediction and its variance (NaN where too few points could be fitted).
    """
    n_planes = y.shape[0]
    h = int(half_window)
    length = min(2 * h + 1, n_planes)
    # the window is centred on the voxel, or shifted to stay inside the block
    first = np.clip(ks - h, 0, n_planes - length)
    kk = first[:, None] + np.arange(length)[None]
    centre_at = ks - first
    rows = np.arange(ks.size)
    sc = ss[:, None]
    w_val = y[kk, sc]
    w_err = e[kk, sc]
    ok = fit_ok[kk, sc]
    nb = neighbours[:, ss].T
    has = nb >= 0
    nbc = np.where(has, nb, 0)
    n_val = template[kk[:, :, None], nbc[:, None, :]]
    use = has & template_ok[kk[:, :, None], nbc[:, None, :]].all(axis=1)
    if screen is not None:
        # neighbours that stand out from their own spectrum on this plane: if they
        # are a minority, a residual hit them (a line would show in most), and they
        # are left out of the basis
        level = np.abs(screen[ks[:, None], nbc])
        typical = _nanmedian_rows(np.where(use, level, np.nan))[:, None]
        with np.errstate(invalid="ignore"):
            outlying = (level > candidate_sigma) & (~bright[ks[:, None], nbc]
                                                    | (level > 4.0 * typical + candidate_sigma))
        hit = use & outlying
        minority = 2 * hit.sum(axis=1) <= use.sum(axis=1)
        use &= ~(hit & minority[:, None])
    n_val = np.where(use[:, None, :], n_val, 0.0)
    basis = np.empty(kk.shape + (5,))
    basis[..., 0] = 1.0
    basis[..., 1:] = n_val @ _BASIS.T
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(ok, 1.0 / (w_err * w_err), 0.0)
    w_val = np.where(ok, w_val, 0.0)
    rank = np.where(use.any(axis=1), 5, 1)
    e2 = e[ks, ss] ** 2
    # Three predictions. (1) The joint fit with the voxel left out: precise where
    # the spectrum is sharply peaked. (2) The same with the planes on either side
    # left out too: a residual spanning 2-3 planes cannot set it. (3) Where the
    # neighbours hold no signal of their own on this plane, the median over
    # neighbours of single-neighbour fits (also without those planes): a few
    # neighbours hit by the same residual cannot drag it, whereas they can drag a
    # joint fit made of noise.
    weight[rows, centre_at] = 0.0
    value, variance, adjacent = _fit_window(basis, w_val, weight.copy(), rows, centre_at,
                                            rank, e2, model_error)
    for step in (-1, 1):
        weight[rows, np.clip(centre_at + step, 0, length - 1)] = 0.0
    value3, variance3, _ = _fit_window(basis, w_val, weight, rows, centre_at, rank, e2,
                                       model_error)
    wider = variance3 < variance
    if bright is not None:
        # on a bright, sharply peaked spectrum the fit without the planes next to
        # the voxel extrapolates the peak from its wings, and undershoots it: it is
        # used there only when the first fit misses a plane next to the voxel badly
        # (the tail of a residual)
        wider &= ~bright[ks, ss] | (adjacent > _TAIL_SIGMA)
    value[wider] = value3[wider]
    variance[wider] = variance3[wider]
    value_nb, variance_nb = _median_of_neighbours(w_val, weight, n_val, use, centre_at)
    level = np.abs(n_val[rows, centre_at]) / e[ks[:, None], nbc]
    quiet = ~(_nanmedian_rows(np.where(use, level, np.nan)) > _QUIET)
    with np.errstate(invalid="ignore"):
        # the joint fit is replaced where it disagrees with the median beyond
        # their uncertainties (a neighbour spoiled it), or is the less precise
        spoiled = quiet & ((np.abs(value - value_nb) > 3.0 * np.sqrt(variance + variance_nb))
                           | (variance > variance_nb))
    value[spoiled] = value_nb[spoiled]
    variance[spoiled] = variance_nb[spoiled]
    return value, variance


def _fit_window(basis, w_val, weight, rows, centre_at, rank, e2, model_error):
    """Weighted least-squares fit of each window, evaluated at its centre.

    One robust step drops the point the first fit misses worst when it lies
    beyond 4 sigma and beyond four times the typical miss, and fits again.
    Returns the prediction, its variance (NaN with too few points) and how badly
    the fit misses the planes next to the centre (largest ``|residual| / ERR`` of
    those it was given, dropped or not).
    """
    given = weight.copy()
    for attempt in range(2):
        aw = basis * weight[..., None]
        normal = np.matmul(aw.transpose(0, 2, 1), basis)
        rhs = np.matmul(w_val[:, None, :], aw)[:, 0]
        # a tiny ridge keeps empty basis columns (missing neighbours) harmless
        ridge = 1e-10 * np.trace(normal, axis1=1, axis2=2) + 1e-300
        normal += ridge[:, None, None] * np.eye(basis.shape[-1])
        inv = np.linalg.inv(normal)
        coef = np.matmul(inv, rhs[..., None])[..., 0]
        t2 = weight * (w_val - np.matmul(basis, coef[..., None])[..., 0]) ** 2
        n_fit = (weight > 0).sum(axis=1)
        chi2 = t2.sum(axis=1) / np.maximum(n_fit - rank, 1)
        if attempt == 1:
            break
        worst = np.argmax(t2, axis=1)
        t_worst = np.sqrt(t2[rows, worst])
        typical = np.sqrt(_nanmedian_rows(np.where(weight > 0, t2, np.nan)))
        drop = (t_worst > 4.0) & (t_worst > 4.0 * typical / 0.6745)
        if not drop.any():
            break
        weight[rows[drop], worst[drop]] = 0.0
    centre = basis[rows, centre_at]
    leverage = (np.matmul(inv, centre[..., None])[..., 0] * centre).sum(axis=1)
    value = (centre * coef).sum(axis=1)
    # How well the fit predicts points it did not see: leave-one-out (PRESS)
    # residuals of the window, in units of their noise. Their excess over 1 is the
    # model error carried to the voxel itself.
    hat = weight * (np.matmul(basis, inv) * basis).sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        press = np.where(weight > 0, t2 / np.maximum(1.0 - hat, 0.05) ** 2, 0.0)
    # the mean over the window, or the worst of the planes nearest the voxel (a
    # sharp line core is where a neighbour basis fails first), whichever is larger
    near = np.abs(np.arange(press.shape[1])[None] - centre_at[:, None]) <= _NEAR_PLANES
    # (the largest of five unit-variance points squared is below 4 most of the time,
    # so that much of it is noise)
    excess = np.maximum(press.sum(axis=1) / np.maximum(n_fit, 1) - 1.0,
                        np.where(near, press, 0.0).max(axis=1) - 4.0)
    variance = leverage * np.maximum(chi2, 1.0) + model_error * np.maximum(excess, 0.0) * e2
    bad = n_fit < _MIN_FIT_POINTS
    value[bad] = np.nan
    variance[bad] = np.nan
    miss = given * (w_val - np.matmul(basis, coef[..., None])[..., 0]) ** 2
    length = basis.shape[1]
    adjacent = np.maximum(miss[rows, np.clip(centre_at - 1, 0, length - 1)],
                          miss[rows, np.clip(centre_at + 1, 0, length - 1)])
    return value, variance, np.sqrt(adjacent)


def _median_of_neighbours(w_val, weight, n_val, use, centre_at):
    """Median over neighbours of the fits ``b + a * n + c * n'`` evaluated at the centre.

    ``weight`` already leaves out the centre and the planes next to it. Returns the
    median and its variance (the candidates' robust spread, at least their typical
    propagated noise); NaN where fewer than three neighbours take part.
    """
    deriv = np.gradient(n_val, axis=1)
    rows = np.arange(n_val.shape[0])
    w = weight[:, :, None]
    wn, wd = w * n_val, w * deriv
    s1 = np.broadcast_to(weight.sum(axis=1)[:, None], use.shape)
    sn, sd = wn.sum(axis=1), wd.sum(axis=1)
    snn, snd, sdd = (wn * n_val).sum(axis=1), (wn * deriv).sum(axis=1), (wd * deriv).sum(axis=1)
    yv = w_val[:, :, None]
    rhs = np.stack([np.broadcast_to((weight * w_val).sum(axis=1)[:, None], use.shape),
                    (wn * yv).sum(axis=1), (wd * yv).sum(axis=1)], -1)
    normal = np.stack([np.stack([s1, sn, sd], -1), np.stack([sn, snn, snd], -1),
                       np.stack([sd, snd, sdd], -1)], -2)
    ridge = 1e-10 * np.trace(normal, axis1=-2, axis2=-1) + 1e-300
    normal = normal + ridge[..., None, None] * np.eye(3)
    inv = _inverse3(normal)
    coef = np.matmul(inv, rhs[..., None])[..., 0]
    centre = np.stack([np.ones(use.shape), n_val[rows, centre_at], deriv[rows, centre_at]], -1)
    cand = (centre * coef).sum(axis=-1)
    lev = (np.matmul(inv, centre[..., None])[..., 0] * centre).sum(axis=-1)
    # a neighbour whose value here lies far outside its range over the window (a
    # residual of its own) extrapolates: its candidate is left out
    typical_lev = _nanmedian_rows(np.where(use, lev, np.nan))
    use = use & (lev <= 10.0 * typical_lev[:, None])
    count = use.sum(axis=1)
    cand = np.where(use, cand, np.nan)
    med = _nanmedian_rows(cand)
    spread = 1.4826 * _nanmedian_rows(np.abs(cand - med[:, None]))
    typical = _nanmedian_rows(np.where(use, lev, np.nan))
    var = np.maximum(spread * spread, typical)
    few = count < 3
    med[few] = np.nan
    var[few] = np.nan
    return med, var


def _inverse3(a):
    """Inverse of a stack of symmetric 3x3 matrices (last two axes), by cofactors."""
    a00, a01, a02 = a[..., 0, 0], a[..., 0, 1], a[..., 0, 2]
    a11, a12, a22 = a[..., 1, 1], a[..., 1, 2], a[..., 2, 2]
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 1.0 / det
    return np.stack([np.stack([c00, c01, c02], -1), np.stack([c01, c11, c12], -1),
                     np.stack([c02, c12, c22], -1)], -2) * scale[..., None, None]


def _nanmedian_rows(a):
    """Median of each row's finite values (NaN for an all-NaN row), without warnings."""
    return masked_median(a.T, np.isfinite(a.T))


def clip_block_robust(y, e, usable, neighbours, *, sky=None, sigma=DEFAULTS["sigma"],
                      grow_sigma=DEFAULTS["grow_sigma"], half_window=DEFAULTS["half_window"],
                      model_error=DEFAULTS["model_error"],
                      scale_window=DEFAULTS["scale_window"], grow=DEFAULTS["grow"],
                      candidate_sigma=DEFAULTS["candidate_sigma"],
                      bright_snr=DEFAULTS["bright_snr"], passes=DEFAULTS["passes"]):
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
    sky : ndarray of bool, shape (m,), optional
        Sky spaxels, on which each plane's noise scale is measured (all spaxels
        when fewer than 16 are given).
    sigma : float
        Threshold on the normalised residual (default 5).
    grow_sigma : float
        Threshold for growing flags to adjacent planes and spaxels (default 3.5).
    half_window : int
        Fit window ``k-H..k+H`` (without ``k``), default 7.
    model_error : float
        Weight of the window's leave-one-out residual excess (beyond noise) in the
        prediction's variance (default 2).
    scale_window : int
        Half-width, in planes, of the median filter on the per-plane scale.
    grow : int
        Growing steps (each one plane / one spaxel).
    candidate_sigma, bright_snr : float
        The screen: voxels whose baseline residual exceeds ``candidate_sigma``, or
        whose baseline exceeds ``bright_snr`` x ERR, are fitted.
    passes : int
        Fits of the voxels near flags (default 3: the first and two refits).

    Returns
    -------
    flags : ndarray of bool
    prediction : RobustPrediction
    """
    n_planes, m = y.shape
    sky = np.ones(m, bool) if sky is None else np.asarray(sky, bool)
    baseline = _spectral_baseline(y, usable)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (y - baseline) / e
    screened = usable & np.isfinite(r)
    scale = _plane_scale(r, screened, sky, scale_window)
    spread = scale[:, None] * np.sqrt(1 + _MEDIAN4_VAR)
    rho = np.where(screened, r / spread, 0.0)
    with np.errstate(invalid="ignore"):
        bright = ~(np.abs(baseline) <= bright_snr * e)
    screen = rho.copy()
    # voxels that stand out of a faint spectrum are left out of every fit window
    # (a residual's other planes must not set the fit of its neighbours)
    # unless most neighbours stand out with it (a faint narrow line)
    with np.errstate(invalid="ignore"):
        outlying = screened & (np.abs(screen) > sigma) & ~bright
    outlying = _unshared(outlying, screen, neighbours, candidate_sigma)
    with np.errstate(invalid="ignore"):
        candidate = usable & (bright | ~(np.abs(rho) <= candidate_sigma))
    value = np.full(y.shape, np.nan)
    variance = np.full(y.shape, np.nan)
    opts = {"half_window": half_window, "model_error": model_error,
            "candidate_sigma": candidate_sigma}

    def repaired_template(flags):
        # neighbour spectra with flagged voxels replaced by their prediction
        repaired = flags & np.isfinite(value)
        return np.where(repaired, value, y), usable & (~flags | repaired)

    def fit(where, flags):
        ks, ss = np.nonzero(where)
        if ks.size == 0:
            return
        if flags is None:
            template, template_ok, fit_ok = y, usable, usable & ~outlying
        else:
            template, template_ok = repaired_template(flags)
            fit_ok = usable & ~flags & ~outlying
        v, var = _predict(y, e, fit_ok, template, template_ok, neighbours, ks, ss,
                          screen=screen, bright=bright, **opts)
        again = ~np.isfinite(v)
        if flags is not None and again.any():
            # where flags leave too few planes, the flagged voxels' repaired values
            # stand in for them
            v[again], var[again] = _predict(template, e, usable, template, template_ok,
                                            neighbours, ks[again], ss[again],
                                            screen=screen, bright=bright, **opts)
        value[ks, ss] = v
        variance[ks, ss] = var
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (y[ks, ss] - v) / np.sqrt(e[ks, ss] ** 2 + var) / scale[ks]
        fitted = np.isfinite(z)
        rho[ks[fitted], ss[fitted]] = z[fitted]
        # too few usable planes around a bright voxel to judge it: left alone (on
        # faint ones the screen's verdict stands; in later passes, the last one's)
        if flags is None:
            undecided = ~fitted & bright[ks, ss]
            rho[ks[undecided], ss[undecided]] = 0.0

    fit(candidate, None)
    first = rho.copy()
    first_value, first_variance = value.copy(), variance.copy()
    flags = _grow(usable & (np.abs(rho) > sigma), rho, usable, neighbours, grow_sigma, grow)
    for _ in range(int(passes) - 1):
        if not flags.any():
            break
        # refit everything whose window or neighbours hold a flag
        fit((candidate | flags) & _neighbourhood(flags, neighbours, half_window), flags)
        # On bright spectra a later fit, with fewer planes, may misjudge real
        # structure: a voxel there stays flagged only if the first pass agrees;
        # and where the later fit is much less precise than the first (flags took
        # the planes that pinned it down), the first one's verdict stands.
        with np.errstate(invalid="ignore"):
            vaguer = bright & (variance > 4.0 * first_variance)
        value[vaguer] = first_value[vaguer]
        variance[vaguer] = first_variance[vaguer]
        rho[vaguer] = first[vaguer]
        agree = np.sign(first) == np.sign(rho)
        weaker = np.where(agree, np.sign(rho) * np.minimum(np.abs(first), np.abs(rho)), 0.0)
        decide = np.where(bright, weaker, rho)
        flags = _grow(usable & (np.abs(decide) > sigma), decide, usable, neighbours,
                      grow_sigma, grow)
    # Replacement values: a flagged voxel on a bright spectrum is predicted once
    # more without the planes next to it (unflagged tails of the same residual would
    # pull the prediction), where that leaves enough planes.
    ks, ss = np.nonzero(flags & bright)
    if ks.size:
        guard = flags.copy()
        guard[1:] |= flags[:-1]
        guard[:-1] |= flags[1:]
        template, template_ok = repaired_template(flags)
        v, var = _predict(y, e, usable & ~guard & ~outlying, template, template_ok,
                          neighbours, ks, ss, screen=screen, bright=bright, **opts)
        better = np.isfinite(v)
        value[ks[better], ss[better]] = v[better]
        variance[ks[better], ss[better]] = var[better]
    missing = flags & ~np.isfinite(value)
    if missing.any():
        fit(missing, flags)
        # a flag no fit could predict (a faint voxel with too few usable planes
        # around it) is given the spectral baseline
        missing = flags & ~np.isfinite(value)
        value[missing] = baseline[missing]
        variance[missing] = (_MEDIAN4_VAR + 1.0) * e[missing] ** 2
    return flags, RobustPrediction(value, variance, rho, scale)


def _unshared(mask, screen, neighbours, threshold):
    """``mask`` less the voxels most usable neighbours share (same sign, beyond ``threshold``)."""
    ks, ss = np.nonzero(mask)
    if ks.size == 0:
        return mask
    nb = neighbours[:, ss]
    has = nb >= 0
    level = screen[ks[None], np.where(has, nb, 0)] * np.sign(screen[ks, ss])[None]
    shared = 2 * (has & (level > threshold)).sum(axis=0) > has.sum(axis=0)
    out = mask.copy()
    out[ks[shared], ss[shared]] = False
    return out


def _grow(flags, rho, ok, neighbours, grow_sigma, steps):
    """Add voxels next to flags (plane or spaxel) whose ``rho`` has the same sign, > grow_sigma."""
    flags = flags.copy()
    ks, ss = np.nonzero(flags)
    for _ in range(int(steps)):
        if ks.size == 0:
            break
        sign = np.sign(rho[ks, ss])
        nk, ns, nsign = _adjacent(ks, ss, sign, neighbours, flags.shape[0])
        r = rho[nk, ns]
        new = ok[nk, ns] & ~flags[nk, ns] & (r * nsign > grow_sigma)
        ks, ss = nk[new], ns[new]
        flags[ks, ss] = True
    return flags


def _adjacent(ks, ss, payload, neighbours, n_planes):
    """Voxels adjacent to ``(ks, ss)``: +-1 plane, or one of the 8 neighbours in the plane."""
    nb = neighbours[:, ss]
    valid = nb >= 0
    k_all = np.concatenate([ks - 1, ks + 1, np.broadcast_to(ks, nb.shape)[valid]])
    s_all = np.concatenate([ss, ss, nb[valid]])
    p_all = np.concatenate([payload, payload, np.broadcast_to(payload, nb.shape)[valid]])
    inside = (k_all >= 0) & (k_all < n_planes)
    return k_all[inside], s_all[inside], p_all[inside]


def _neighbourhood(flags, neighbours, half_window):
    """Voxels within ``half_window`` planes of a flag in its spaxel or a neighbouring one."""
    n_planes, m = flags.shape
    ks, ss = np.nonzero(flags)
    nb = neighbours[:, ss]
    valid = nb >= 0
    k_sp = np.concatenate([ks, np.broadcast_to(ks, nb.shape)[valid]])
    s_sp = np.concatenate([ss, nb[valid]])
    mark = np.zeros(flags.shape, bool)
    for step in range(-int(half_window), int(half_window) + 1):
        k = k_sp + step
        inside = (k >= 0) & (k < n_planes)
        mark[k[inside], s_sp[inside]] = True
    return mark
