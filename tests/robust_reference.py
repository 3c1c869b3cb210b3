"""Vectorised NumPy reference of robust mode's per-voxel predictions.

This is the array-code version of :func:`layerclip.robust_fits.predict_voxels`
(the form robust mode was first written in). It is kept here, outside the package,
as an independent implementation the compiled kernel is checked against.
"""

from typing import NamedTuple

import numpy as np

from layerclip.robust import masked_median
from layerclip.robust_fits import (
    _CHECK_SIGMA,
    _DISSENT_SIGMA,
    _MIN_FIT_POINTS,
    _NEAR_PLANES,
    _QUIET,
    _SIDING,
    _SIDING_ROUNDS,
    _SIDING_TAIL_SIGMA,
    _TAIL_SIGMA,
    _VAGUE,
)

# Basis weights of the eight neighbours (NW N NE W E SW S SE): edge, diag, E - W, N - S.
_BASIS = np.zeros((4, 8))
_BASIS[0, [1, 3, 4, 6]] = 1.0
_BASIS[1, [0, 2, 5, 7]] = 1.0
_BASIS[2, 4], _BASIS[2, 3] = 1.0, -1.0
_BASIS[3, 6], _BASIS[3, 1] = 1.0, -1.0


def spectral_baseline(y, usable):
    """Median of each spaxel's usable values at planes -3, -2, +2, +3 (NaN if none)."""
    n = y.shape[0]
    pad = max(abs(d) for d in (-3, -2, 2, 3))
    padded = np.full((n + 2 * pad,) + y.shape[1:], np.nan)
    np.copyto(padded[pad:pad + n], y, where=usable)
    padded[pad:pad + n][~usable] = np.nan
    vals = [padded[pad + d:pad + d + n] for d in (-3, -2, 2, 3)]
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


def predict(y, e, fit_ok, template, template_ok, neighbours, ks, ss, *, half_window,
             model_error, bright_snr, screen=None, bright=None, candidate_sigma=3.5,
             flagged=None, drop_adjacent=False, return_aside=False, raw=None):
    """Neighbour-basis predictions for the voxels ``(ks, ss)`` of a compact block.

    Parameters
    ----------
    y, e : ndarray, shape (n_planes, m)
        Flux and ERR.
    fit_ok : ndarray of bool
        Voxels a spaxel's own fit may use.
    template, template_ok : ndarray
        Neighbour spectra and where they are usable; a neighbour is used for a
        voxel only if it is usable on every plane of the window, or (with ``raw``,
        without ``drop_adjacent``) where it is not usable in ``raw`` (a NaN hole)
        on one plane at most, not the voxel's: that plane is then dropped from the
        fit and the neighbour's value there filled in from the planes either side.
    ks, ss : ndarray of int
        Planes and spaxels to predict.
    bright_snr : float
        A joint fit's prediction on a bright spectrum (or without ``bright``, any),
        or above ``bright_snr`` x ERR, has at least the variance that the
        neighbours' noise on the voxel's plane gives it.
    screen, bright : ndarray, optional
        The screen's normalised residual and where spectra are bright. Neighbours
        that stand out on the voxel's plane (beyond ``candidate_sigma`` on a faint
        spectrum; on a bright one, also beyond four times the neighbours' typical
        value) are left out of the basis when they are a minority.
    flagged : ndarray of bool, optional
        Flagged voxels: neighbours flagged on the voxel's plane are left out of the
        basis when they are a minority (before the test above); where one was, the
        fit without the planes next to the voxel may be chosen on a bright spectrum
        too.
    drop_adjacent : bool
        Neighbours flagged on a plane next to the voxel's count as flagged on it.

    Returns
    -------
    value, variance : ndarray
        Prediction and its variance (NaN where too few points could be fitted).
    aside : ndarray of uint8
        With ``return_aside``: bit ``q`` set where the prediction is step (4)'s,
        made without neighbour ``q``.
    """
    n_planes = y.shape[0]
    h = int(half_window)
    length = min(2 * h + 1, n_planes)
    aside = np.zeros(ks.size, np.uint8)
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
    nb_ok = template_ok[kk[:, :, None], nbc[:, None, :]]
    holes = np.zeros(nb_ok.shape, bool)
    if raw is not None and not drop_adjacent:
        # (unusable voxels are holes; a repaired one without a value is not; the
        # tail check's fits, drop_adjacent, allow none)
        holes = ~raw[1][kk[:, :, None], nbc[:, None, :]]
    use = (has & (nb_ok | holes).all(axis=1) & (holes.sum(axis=1) <= 1)
           & ~holes[rows, centre_at])
    tainted = np.zeros(ks.size, bool)
    if flagged is not None:
        if drop_adjacent:
            grown = flagged.copy()
            grown[1:] |= flagged[:-1]
            grown[:-1] |= flagged[1:]
            flagged = grown
        hit = use & flagged[ks[:, None], nbc]
        dropped = hit & (2 * hit.sum(axis=1) <= use.sum(axis=1))[:, None]
        tainted = dropped.any(axis=1)
        use &= ~dropped
    if screen is not None:
        # neighbours that stand out from their own spectrum on this plane: if they
        # are fewer than half, a residual hit them (a line would show in most, or,
        # moved by a velocity gradient, in half), and they are left out of the basis
        level = np.abs(screen[ks[:, None], nbc])
        typical = _nanmedian_rows(np.where(use, level, np.nan))[:, None]
        with np.errstate(invalid="ignore"):
            outlying = (level > candidate_sigma) & (~bright[ks[:, None], nbc]
                                                    | (level > 4.0 * typical + candidate_sigma))
        hit = use & outlying
        minority = 2 * hit.sum(axis=1) < use.sum(axis=1)
        use &= ~(hit & minority[:, None])
    # the planes where a neighbour in the basis has a hole are dropped from the fit;
    # its value there is the mean of the planes either side (at an end, the next)
    holed = holes & use[:, None, :]
    ok = ok & ~holed.any(axis=2)
    fill = np.empty(n_val.shape)
    fill[:, 1:-1] = 0.5 * (n_val[:, :-2] + n_val[:, 2:])
    fill[:, 0] = n_val[:, 1]
    fill[:, -1] = n_val[:, -2]
    n_val = np.where(holed, fill, n_val)
    n_val = np.where(use[:, None, :], n_val, 0.0)
    basis = np.empty(kk.shape + (5,))
    basis[..., 0] = 1.0
    basis[..., 1:] = n_val @ _BASIS.T
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(ok, 1.0 / (w_err * w_err), 0.0)
    w_val = np.where(ok, w_val, 0.0)
    rank = np.where(use.any(axis=1), 5, 1)
    e2 = e[ks, ss] ** 2
    floor = _Floor(np.where(use, e[ks[:, None], nbc] ** 2, 0.0),
                   np.where(np.ones(ks.size, bool) if bright is None else bright[ks, ss],
                            -np.inf, bright_snr * e[ks, ss]))
    # Three predictions. (1) The joint fit with the voxel left out: precise where
    # the spectrum is sharply peaked. (2) The same with the planes on either side
    # left out too: a residual spanning 2-3 planes cannot set it. (3) Where the
    # neighbours hold no signal of their own on this plane, the median over
    # neighbours of single-neighbour fits (also without those planes): a few
    # neighbours hit by the same residual cannot drag it, whereas they can drag a
    # joint fit made of noise.
    weight[rows, centre_at] = 0.0
    given = weight.copy()
    value, variance, adjacent = _fit_window(basis, w_val, weight.copy(), rows, centre_at,
                                            rank, e2, model_error, floor)
    for step in (-1, 1):
        weight[rows, np.clip(centre_at + step, 0, length - 1)] = 0.0
    value3, variance3, _ = _fit_window(basis, w_val, weight, rows, centre_at, rank, e2,
                                       model_error, floor)
    wider = variance3 < variance
    if bright is not None:
        # on a bright, sharply peaked spectrum the fit without the planes next to
        # the voxel extrapolates the peak from its wings, and undershoots it: it is
        # used there only when the first fit misses a plane next to the voxel badly
        # (the tail of a residual), or when a neighbour flagged on this plane was
        # left out (a residual over several spaxels spans planes too)
        wider &= ~bright[ks, ss] | (adjacent > _TAIL_SIGMA) | tainted
    value[wider] = value3[wider]
    variance[wider] = variance3[wider]
    # quiet: the neighbours hold no signal on this plane, nor a slope across it (a
    # line's edge, which the single fits would follow through n')
    level = np.abs(n_val[rows, centre_at]) / e[ks[:, None], nbc]
    inner = (centre_at > 0) & (centre_at < length - 1)
    before = n_val[rows, np.clip(centre_at - 1, 0, length - 1)]
    after = n_val[rows, np.clip(centre_at + 1, 0, length - 1)]
    slope = 0.5 * np.abs(after - before) / e[ks[:, None], nbc]
    quiet = ~(_nanmedian_rows(np.where(use, level, np.nan)) > _QUIET) & ~(
        inner & (_nanmedian_rows(np.where(use, slope, np.nan)) > _QUIET))
    first_pass = flagged is None or not flagged.any()
    with np.errstate(invalid="ignore"):
        # (in a refit, on a faint spectrum only, and with only the neighbours that
        # extrapolate as candidates for siding)
        on_bright = np.zeros(ks.size, bool) if bright is None else bright[ks, ss]
        vague = (~quiet & (first_pass | ~on_bright) & (use.sum(axis=1) > 3)
                 & (variance > _VAGUE * e2))
    if vague.any():
        # (4) a vague first prediction: the fits again without the neighbours whose
        # single-neighbour fits side with the voxel
        at = np.flatnonzero(vague)
        # (the voxel's own values on the planes either side, unrepaired; NaN where
        # unusable)
        raw_y, raw_ok = raw
        x_side = []
        for step_k in (-1, 1):
            kn = ks[at] + step_k
            kc = np.clip(kn, 0, n_planes - 1)
            ok_side = (kn >= 0) & (kn < n_planes) & raw_ok[kc, ss[at]]
            x_side.append(np.where(ok_side, raw_y[kc, ss[at]], np.nan))
        value4, variance4, side = _without_siding_neighbours(
            w_val[at], given[at], n_val[at], use[at], centre_at[at], rank[at], e2[at],
            y[ks[at], ss[at]], model_error, value[at], variance[at],
            e[ks[at, None], nbc[at]], x_side[0], x_side[1], candidate_sigma,
            not first_pass, _Floor(floor.nb_var[at], floor.above[at]))
        better = np.isfinite(value4)
        value[at[better]] = value4[better]
        variance[at[better]] = variance4[better]
        aside[at] = (side.astype(np.uint8) << np.arange(8, dtype=np.uint8)).sum(axis=1,
                                                                               dtype=np.uint8)
    value_nb, variance_nb = _median_of_neighbours(w_val, weight, n_val, use, centre_at)
    with np.errstate(invalid="ignore"):
        # the joint fit is replaced where it disagrees with the median beyond
        # their uncertainties (a neighbour spoiled it), or is the less precise
        spoiled = quiet & ((np.abs(value - value_nb) > 3.0 * np.sqrt(variance + variance_nb))
                           | (variance > variance_nb))
    value[spoiled] = value_nb[spoiled]
    variance[spoiled] = variance_nb[spoiled]
    return (value, variance, aside) if return_aside else (value, variance)


def _without_siding_neighbours(w_val, given, n_val, use, centre_at, rank, e2, x, model_error,
                               value0, variance0, nb_err, x_before, x_after, candidate_sigma,
                               only_extrapolating, floor):
    """Step (4) of :func:`predict` for the rows given (NaN where it does not apply)."""
    rows = np.arange(w_val.shape[0])
    length = w_val.shape[1]
    sides = [np.clip(centre_at + step, 0, length - 1) for step in (-1, 1)]
    without_sides = given.copy()
    for j in sides:
        without_sides[rows, j] = 0.0
    median, median_var, cand, lev, keep = _median_of_neighbours(
        w_val, without_sides, n_val, use, centre_at, parts=True)
    # (a neighbour left out of the median because it extrapolates may side too)
    cand = np.where(use, cand, np.nan)
    step = x - median
    with np.errstate(invalid="ignore"):
        go = np.abs(step) > _DISSENT_SIGMA * np.sqrt(e2 + median_var)
        bound = _SIDING * np.sqrt(_nanmedian_rows(np.where(keep, lev, np.nan)))
        # (one that extrapolates, not where another peaks on this plane beyond
        # candidate_sigma: a line narrower than the planes beside this one)
        sg = np.sign(step)[:, None]
        inner = (centre_at > 0) & (centre_at < length - 1)
        bump = sg * n_val[rows, centre_at] - np.maximum(
            sg * n_val[rows, np.clip(centre_at - 1, 0, length - 1)],
            sg * n_val[rows, np.clip(centre_at + 1, 0, length - 1)])
        peaked = (keep & (bump > candidate_sigma * nb_err)).any(axis=1)
        # (or, where one does, one whose own peak here is at most twice the voxel's)
        own_bump = sg[:, 0] * x - np.maximum(sg[:, 0] * x_before, sg[:, 0] * x_after)
        own_bump = np.where(np.isfinite(own_bump), own_bump, -np.inf)
        extra = ~keep & inner[:, None] & (~peaked[:, None] | (bump <= 2.0 * own_bump[:, None]))
        within = extra | (keep & (not only_extrapolating))
        side = use & within & ((cand - median[:, None]) * sg > bound[:, None])
        # the median without them may show more (a hit neighbour the others' median
        # half hid), up to _SIDING_ROUNDS times
        for _ in range(_SIDING_ROUNDS):
            some = side.any(axis=1)
            rest = _nanmedian_rows(np.where(keep & ~side, cand, np.nan))
            side |= (some[:, None] & use & within & ~side
                     & ((cand - rest[:, None]) * sg > bound[:, None]))
    n_side = side.sum(axis=1)
    go &= (n_side > 0) & (2 * n_side < use.sum(axis=1))
    n_val = np.where(side[:, None, :], 0.0, n_val)
    floor = _Floor(np.where(side, 0.0, floor.nb_var), floor.above)
    basis = np.empty(n_val.shape[:2] + (5,))
    basis[..., 0] = 1.0
    basis[..., 1:] = n_val @ _BASIS.T
    value, variance, adjacent, coef1, _ = _fit_window(basis, w_val, given.copy(), rows,
                                                      centre_at, rank, e2, model_error, floor,
                                                      parts=True)
    # the joint fit's residual on the plane next to the voxel it misses worse
    inner = (centre_at > 0) & (centre_at < length - 1)
    miss = []
    for step_j in (-1, 1):
        jc = np.clip(centre_at + step_j, 0, length - 1)
        r = w_val[rows, jc] - (basis[rows, jc] * coef1).sum(axis=1)
        miss.append((given[rows, jc] * r ** 2, r))
    side_resid = np.where(inner, np.where(miss[1][0] > miss[0][0], miss[1][1], miss[0][1]),
                          0.0)
    value3, variance3, _, coef, inv = _fit_window(basis, w_val, without_sides.copy(), rows,
                                                  centre_at, rank, e2, model_error, floor,
                                                  parts=True)
    # the fit without the planes next to the voxel must predict one of them
    predicts_a_side = np.zeros(rows.size, bool)
    for step_j in (-1, 1):
        j = centre_at + step_j
        inside = (j >= 0) & (j < length)
        jc = np.clip(j, 0, length - 1)
        b = basis[rows, jc]
        model = (b * coef).sum(axis=1)
        lev_j = (np.matmul(inv, b[..., None])[..., 0] * b).sum(axis=1)
        g = given[rows, jc]
        with np.errstate(divide="ignore", invalid="ignore"):
            predicts_a_side |= inside & (g > 0) & (
                np.abs(w_val[rows, jc] - model) < _CHECK_SIGMA * np.sqrt(1.0 / g + lev_j))
    rest, rest_var = _median_of_neighbours(w_val, without_sides, n_val, use & ~side, centre_at)
    with np.errstate(invalid="ignore"):
        agrees3 = np.abs(value3 - rest) < _CHECK_SIGMA * np.sqrt(variance3 + rest_var)
        # (or beyond _SIDING_TAIL_SIGMA on the voxel's side, and more precise than the
        # first prediction: the residual's other plane in the voxel's own spectrum)
        tail = (adjacent > _TAIL_SIGMA) | (
            (adjacent > _SIDING_TAIL_SIGMA) & (side_resid * (x - value3) > 0.0)
            & (variance3 < variance0))
        wider = (variance3 < variance) & tail & (predicts_a_side | agrees3)
    value[wider] = value3[wider]
    variance[wider] = variance3[wider]
    with np.errstate(invalid="ignore"):
        go &= np.abs(value - rest) < _CHECK_SIGMA * np.sqrt(variance + rest_var)
        go &= (variance < variance0) | (
            np.abs(value0 - rest) > _CHECK_SIGMA * np.sqrt(variance0 + rest_var))
    return np.where(go, value, np.nan), np.where(go, variance, np.nan), side & go[:, None]


class _Floor(NamedTuple):
    """Each row's neighbours' noise variance on its centre plane (0 where a neighbour
    is not in the basis) and the prediction above which it bounds the variance."""

    nb_var: np.ndarray
    above: np.ndarray


def _fit_window(basis, w_val, weight, rows, centre_at, rank, e2, model_error, floor,
                parts=False):
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
    coef_variance = leverage * np.maximum(chi2, 1.0)
    variance = coef_variance + model_error * np.maximum(excess, 0.0) * e2
    # (above floor.above, at least the variance of the neighbour values combined: the
    # prediction weighs each neighbour by the basis coefficients it enters with)
    weights = coef[:, 1:] @ _BASIS
    spread = coef_variance + (weights ** 2 * floor.nb_var).sum(axis=1)
    variance = np.where(value > floor.above, np.maximum(variance, spread), variance)
    bad = n_fit < _MIN_FIT_POINTS
    value[bad] = np.nan
    variance[bad] = np.nan
    miss = given * (w_val - np.matmul(basis, coef[..., None])[..., 0]) ** 2
    length = basis.shape[1]
    adjacent = np.maximum(miss[rows, np.clip(centre_at - 1, 0, length - 1)],
                          miss[rows, np.clip(centre_at + 1, 0, length - 1)])
    if parts:
        return value, variance, np.sqrt(adjacent), coef, inv
    return value, variance, np.sqrt(adjacent)


def _median_of_neighbours(w_val, weight, n_val, use, centre_at, parts=False):
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
    cand_all = cand
    cand = np.where(use, cand, np.nan)
    med = _nanmedian_rows(cand)
    spread = 1.4826 * _nanmedian_rows(np.abs(cand - med[:, None]))
    typical = _nanmedian_rows(np.where(use, lev, np.nan))
    var = np.maximum(spread * spread, typical)
    few = count < 3
    med[few] = np.nan
    var[few] = np.nan
    if parts:
        return med, var, cand_all, lev, use
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


def predict_like_kernel(y, e, usable, neighbours, ks, ss, *, opts, unusable_before=None,
                        exclude=(), flagged=None, repaired_value=None,
                        own_repaired=False, drop_adjacent=False, screen, bright,
                        return_aside=False):
    """:func:`predict` called with the arguments of ``layerclip.robust_passes._predict``."""
    repaired = None
    if flagged is None:
        template, template_ok = y, usable
    else:
        repaired = flagged[0]
        fixed = repaired & np.isfinite(repaired_value)
        template = np.where(fixed, repaired_value, y)
        template_ok = usable & (~repaired | fixed)
    if own_repaired:
        own, fit_ok = template, usable
    else:
        own, fit_ok = y, usable.copy()
        for mask in exclude:
            fit_ok &= ~mask
    return predict(own, e, fit_ok, template, template_ok, neighbours, ks, ss, screen=screen,
                   bright=bright, flagged=repaired, drop_adjacent=drop_adjacent,
                   return_aside=return_aside, raw=(y, usable), **opts)
