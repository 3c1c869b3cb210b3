"""Compiled per-voxel prediction fits of robust mode (numba).

:func:`predict_voxels` makes, for each voxel it is given, the predictions that
:mod:`layerclip.robust` describes (the joint neighbour-basis fit with the voxel left
out, the same without the planes next to it, the median of single-neighbour fits,
and for a vague first prediction the joint fits without the neighbours whose single
fits side with the voxel) and keeps the one the rules there choose. A few thousand
small least-squares problems per cube are what a loop does well and array code does
badly (most of the array code's time goes to building and indexing temporaries), so
this part is compiled. :func:`sum_fit_voxels` gives replacement values from a
two-term fit on the summed neighbour spectrum, and :func:`count_unusable` the
running count of unusable planes both fits take to find a neighbour's holes.

The functions take plain arrays only, release the GIL and are cached on disk after
their first compilation. ``tests/robust_reference.py`` keeps an independent
vectorised NumPy version of the same computation, which the tests compare with.

The compile options ``_JIT`` and the small sort ``_sort_few`` are shared with
:mod:`layerclip.robust_screen`, which imports them from here. numba's disk cache
notices changes to a function's own file only: after changing ``_sort_few``,
delete ``src/layerclip/__pycache__/robust_screen.*`` so that the functions there
that call it are compiled again.

See Also
--------
layerclip.robust_screen : the other compiled half: the screen, the noise scale,
    the neighbour ceiling and growing flags.
layerclip.robust : the stages that call these kernels, and the method.
"""

import numpy as np
from numba import njit

# Neighbour order as in robust._OFFSETS: NW N NE W E SW S SE.
# The basis: 1, edge sum (N W E S), diagonal sum (NW NE SW SE), E - W, N - S.
_N_BASIS = 5
_MIN_FIT_POINTS = 8
# Planes either side of a voxel whose leave-one-out misfit bounds its model error.
_NEAR_PLANES = 2
# Neighbours whose median |value| / ERR on the plane, and median half-difference of the
# planes either side / ERR, are below this hold no signal (are quiet).
_QUIET = 3.0
# A miss of the planes next to a bright voxel beyond this (in ERR) marks a residual's tail.
_TAIL_SIGMA = 5.0
# A prediction whose variance exceeds this many ERR^2 is vague: its basis may hold a
# residual that spans the voxel and some of its neighbours (first predictions only).
_VAGUE = 4.0
# The median of single-neighbour fits must sit this far (in its and the voxel's noise)
# from the voxel before neighbours that side with the voxel are left out.
_DISSENT_SIGMA = 3.0
# A neighbour sides with the voxel when its single fit lies beyond this many times its
# typical propagated noise from that median, on the voxel's side.
_SIDING = 3.0
# Rounds in which the median of the single fits not (yet) siding is taken again.
_SIDING_ROUNDS = 2
# Without the neighbours that sided with the voxel, a miss of a plane next to it beyond
# this (in ERR, with the voxel's sign) marks the residual's other plane in its own
# spectrum, which those neighbours' share of the residual had explained.
_SIDING_TAIL_SIGMA = 3.0
# Agreement required (in combined standard deviations) of the fit without those
# neighbours with the planes it left out and with the median of the rest.
_CHECK_SIGMA = 3.0
# A neighbour with this many unusable planes (NaN holes) in a fit window, none of them
# the voxel's own plane, stays in the basis; the fit drops those planes instead.
_NEIGHBOUR_HOLES = 1

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**_JIT)
def _sort_few(buf, n):
    """Sort ``buf[:n]`` in place (insertion sort: for the few values of a neighbourhood)."""
    for i in range(1, n):
        v = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v


# A sorting network for eight values (19 compare-exchanges; Knuth, TAOCP 5.3.4).
_NETWORK_8 = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (1, 2), (5, 6),
              (0, 4), (3, 7), (1, 5), (2, 6), (1, 4), (3, 6), (2, 4), (3, 5), (3, 4))


@njit(**_JIT)
def _median(buf, n):
    """Median of ``buf[:n]`` (sorted in place); NaN when ``n`` is 0.

    Up to eight values (a voxel's neighbours) go through a sorting network
    (``buf[n:8]`` padded with +inf): its min/max steps have no branches to
    mispredict, unlike insertion sort's, which took a tenth of the fits' time.
    """
    if n == 0:
        return np.nan
    if n <= 8 and buf.size >= 8:
        for i in range(n, 8):
            buf[i] = np.inf
        for i, j in _NETWORK_8:
            a = buf[i]
            b = buf[j]
            buf[i] = min(a, b)
            buf[j] = max(a, b)
    else:
        _sort_few(buf, n)
    return 0.5 * (buf[(n - 1) // 2] + buf[n // 2])


@njit(**_JIT)
def _finite_median(values, keep, buf):
    """Median of the finite ``values[q]`` where ``keep[q]`` (NaN if none)."""
    n = 0
    for q in range(values.size):
        if keep[q] and np.isfinite(values[q]):
            buf[n] = values[q]
            n += 1
    return _median(buf, n)


@njit(**_JIT)
def _cholesky(a, size):
    """Lower Cholesky factor of the symmetric ``a`` (lower triangle used), in place.

    The diagonal holds the factor's reciprocal diagonal (which is all the solves
    need). A pivot that is not positive (a singular matrix) makes the factor NaN.
    """
    for j in range(size):
        d = a[j, j]
        for p in range(j):
            d -= a[j, p] * a[j, p]
        inv_d = 1.0 / np.sqrt(d) if d > 0.0 else np.nan
        a[j, j] = inv_d
        for i in range(j + 1, size):
            v = a[i, j]
            for p in range(j):
                v -= a[i, p] * a[j, p]
            a[i, j] = v * inv_d


@njit(**_JIT)
def _forward_norm2(chol, rows, j, size, tmp):
    """``|L^-1 v|^2`` for ``v = rows[j]`` and the factor of :func:`_cholesky`.

    That is ``v @ inv(L L^T) @ v``.
    """
    total = 0.0
    for i in range(size):
        x = rows[j, i]
        for p in range(i):
            x -= chol[i, p] * tmp[p]
        x *= chol[i, i]
        tmp[i] = x
        total += x * x
    return total


@njit(**_JIT)
def _inverse_from_cholesky(chol, inv, size):
    """Lower triangle of ``(L L^T)^-1`` from the factor of :func:`_cholesky`."""
    # L^-1, lower triangular, into the upper triangle of inv (transposed), then
    # inv[a, b] = sum_p L^-1[p, a] L^-1[p, b] for p >= a >= b
    for j in range(size):
        inv[j, j] = chol[j, j]
        for i in range(j + 1, size):
            x = 0.0
            for p in range(j, i):
                x -= chol[i, p] * inv[j, p]
            inv[j, i] = x * chol[i, i]
    for a in range(size):
        for b in range(a + 1):
            total = 0.0
            for p in range(a, size):
                total += inv[a, p] * inv[b, p]
            inv[a, b] = total


@njit(**_JIT)
def _fit_window(basis, wv, weight, length, centre, rank, e2, model_error, chol, inv, coef,
                resid, scratch, nb_var, floor_above):
    """Weighted least-squares fit of one window, evaluated at ``centre``.

    One robust step drops the worst-fitted point when it lies beyond 4 sigma and
    beyond four times the typical miss, and fits again (``weight`` is updated).
    Returns the prediction, its variance (NaN with too few points) and the largest
    miss, in ERR, of the planes next to the centre among the points given.

    A prediction above ``floor_above`` (real signal) is never stated more precise
    than the noise of the neighbour values it combines on the centre plane
    (:func:`_basis_noise` of ``nb_var``, each neighbour's ERR squared there, 0 for
    one not in the basis): the window's misfits estimate that noise from a dozen
    points, and where they happen to fall low, a prediction on a bright, steep
    profile, whose directional terms weigh a neighbour by more than one, was
    stated several times too precise (a flag on a point source's wing).
    """
    given_prev = weight[max(centre - 1, 0)]
    given_next = weight[min(centre + 1, length - 1)]
    tmp = scratch[:_N_BASIS]
    n_fit = 0
    chi2 = 0.0
    for attempt in range(2):
        # the normal equations, summed in locals (held in registers: summed into
        # ``chol`` itself, every term was a load and a store)
        n00 = n10 = n11 = n20 = n21 = n22 = n30 = n31 = n32 = n33 = 0.0
        n40 = n41 = n42 = n43 = n44 = 0.0
        r0 = r1 = r2 = r3 = r4 = 0.0
        for j in range(length):
            w = weight[j]
            if w > 0.0:
                b0 = basis[j, 0]
                b1 = basis[j, 1]
                b2 = basis[j, 2]
                b3 = basis[j, 3]
                b4 = basis[j, 4]
                v = wv[j]
                wa = w * b0
                r0 += wa * v
                n00 += wa * b0
                wa = w * b1
                r1 += wa * v
                n10 += wa * b0
                n11 += wa * b1
                wa = w * b2
                r2 += wa * v
                n20 += wa * b0
                n21 += wa * b1
                n22 += wa * b2
                wa = w * b3
                r3 += wa * v
                n30 += wa * b0
                n31 += wa * b1
                n32 += wa * b2
                n33 += wa * b3
                wa = w * b4
                r4 += wa * v
                n40 += wa * b0
                n41 += wa * b1
                n42 += wa * b2
                n43 += wa * b3
                n44 += wa * b4
        chol[0, 0] = n00
        chol[1, 0] = n10
        chol[1, 1] = n11
        chol[2, 0] = n20
        chol[2, 1] = n21
        chol[2, 2] = n22
        chol[3, 0] = n30
        chol[3, 1] = n31
        chol[3, 2] = n32
        chol[3, 3] = n33
        chol[4, 0] = n40
        chol[4, 1] = n41
        chol[4, 2] = n42
        chol[4, 3] = n43
        chol[4, 4] = n44
        coef[0] = r0
        coef[1] = r1
        coef[2] = r2
        coef[3] = r3
        coef[4] = r4
        trace = 0.0
        for a in range(_N_BASIS):
            trace += chol[a, a]
        ridge = 1e-10 * trace + 1e-300
        for a in range(_N_BASIS):
            chol[a, a] += ridge
        _cholesky(chol, _N_BASIS)
        # coef = (L L^T)^-1 rhs: forward, then back substitution
        for i in range(_N_BASIS):
            x = coef[i]
            for p in range(i):
                x -= chol[i, p] * coef[p]
            coef[i] = x * chol[i, i]
        for i in range(_N_BASIS - 1, -1, -1):
            x = coef[i]
            for p in range(i + 1, _N_BASIS):
                x -= chol[p, i] * coef[p]
            coef[i] = x * chol[i, i]
        n_fit = 0
        sum_t2 = 0.0
        worst = 0
        worst_t2 = -1.0
        for j in range(length):
            model = 0.0
            for a in range(_N_BASIS):
                model += basis[j, a] * coef[a]
            resid[j] = wv[j] - model
            t2 = weight[j] * resid[j] * resid[j]
            if weight[j] > 0.0:
                n_fit += 1
                sum_t2 += t2
            if t2 > worst_t2:
                worst_t2 = t2
                worst = j
        chi2 = sum_t2 / max(n_fit - rank, 1)
        if attempt == 1:
            break
        t_worst = np.sqrt(worst_t2)
        if not t_worst > 4.0:
            break
        m = 0
        for j in range(length):
            if weight[j] > 0.0:
                scratch[_N_BASIS + m] = weight[j] * resid[j] * resid[j]
                m += 1
        typical = np.sqrt(_median(scratch[_N_BASIS:], m))
        if not t_worst > 4.0 * typical / 0.6745:
            break
        weight[worst] = 0.0
    leverage = _forward_norm2(chol, basis, centre, _N_BASIS, tmp)
    value = 0.0
    for a in range(_N_BASIS):
        value += basis[centre, a] * coef[a]
    # the inverse normal matrix, (L L^T)^-1 = L^-T L^-1, for the hat values
    _inverse_from_cholesky(chol, inv, _N_BASIS)
    press_sum = 0.0
    near_max = 0.0
    for a in range(_N_BASIS):
        for b in range(a):
            inv[a, b] *= 2.0
    for j in range(length):
        if weight[j] > 0.0:
            quad = 0.0
            for a in range(_N_BASIS):
                ba = basis[j, a]
                row = ba * inv[a, a]
                for b in range(a):
                    row += basis[j, b] * inv[a, b]
                quad += ba * row
            hat = weight[j] * quad
            d = max(1.0 - hat, 0.05)
            press = weight[j] * resid[j] * resid[j] / (d * d)
            press_sum += press
            if abs(j - centre) <= _NEAR_PLANES and press > near_max:
                near_max = press
    excess = max(press_sum / max(n_fit, 1) - 1.0, near_max - 4.0)
    coef_variance = leverage * max(chi2, 1.0)
    variance = coef_variance + model_error * max(excess, 0.0) * e2
    if value > floor_above:
        variance = max(variance, coef_variance + _basis_noise(coef, nb_var))
    if n_fit < _MIN_FIT_POINTS:
        value = np.nan
        variance = np.nan
    prev = given_prev * resid[max(centre - 1, 0)] ** 2
    nxt = given_next * resid[min(centre + 1, length - 1)] ** 2
    return value, variance, np.sqrt(max(prev, nxt))


@njit(**_JIT)
def _basis_row(n_val, basis, j):
    """Row ``j`` of the basis from the neighbours' values: edge, diag, E - W, N - S."""
    basis[j, 0] = 1.0
    basis[j, 1] = n_val[j, 1] + n_val[j, 3] + n_val[j, 4] + n_val[j, 6]
    basis[j, 2] = n_val[j, 0] + n_val[j, 2] + n_val[j, 5] + n_val[j, 7]
    basis[j, 3] = n_val[j, 4] - n_val[j, 3]
    basis[j, 4] = n_val[j, 6] - n_val[j, 1]


@njit(**_JIT)
def _basis_noise(coef, nb_var):
    """Variance that the neighbours' noise (``nb_var``) gives the prediction ``basis . coef``.

    The prediction weighs each neighbour by the coefficients of the basis terms it
    enters (:func:`_basis_row`): an edge neighbour by the edge sum's and plus or
    minus its direction's, a corner by the corner sum's.
    """
    edge = coef[1]
    east_west = coef[3]
    south_north = coef[4]
    return (coef[2] * coef[2] * (nb_var[0] + nb_var[2] + nb_var[5] + nb_var[7])
            + (edge - south_north) ** 2 * nb_var[1] + (edge + south_north) ** 2 * nb_var[6]
            + (edge - east_west) ** 2 * nb_var[3] + (edge + east_west) ** 2 * nb_var[4])


@njit(**_JIT)
def _without_sides(given, weight, length, centre):
    """``weight``: ``given`` with the planes next to the centre left out."""
    for j in range(length):
        weight[j] = given[j]
    weight[max(centre - 1, 0)] = 0.0
    weight[min(centre + 1, length - 1)] = 0.0


@njit(**_JIT)
def _predicts_a_side(basis, wv, given, length, centre, chol, coef, tmp):
    """Whether the last fit (made without the planes next to the centre) predicts one of them.

    ``chol`` and ``coef`` are that fit's; ``given`` the weights before any plane
    was left out. A residual spanning two planes spoils one side at most, whereas a
    basis that cannot follow a sharp line core misses both.
    """
    for j in (centre - 1, centre + 1):
        if j < 0 or j >= length or not given[j] > 0.0:
            continue
        model = 0.0
        for a in range(_N_BASIS):
            model += basis[j, a] * coef[a]
        lev = _forward_norm2(chol, basis, j, _N_BASIS, tmp)
        if abs(wv[j] - model) < _CHECK_SIGMA * np.sqrt(1.0 / given[j] + lev):
            return True
    return False


@njit(**_JIT)
def _without_siding_neighbours(x, median, value0, variance0, wv, given, weight, n_val, deriv,
                               use, n_use, nb_err, x_before, x_after, candidate_sigma, basis,
                               length, centre, rank, e2, model_error, side, kept, eligible,
                               bump, cand, lev, keep, deviation, buf, sums, chol, inv, coef,
                               resid, scratch, only_extrapolating, nb_var, floor_above):
    """The joint fit without the neighbours whose single fits side with the voxel.

    A residual spread over the voxel and two or three of its neighbours puts itself
    into the basis of the voxel's fit (and, through its other planes, into the
    window's misfits, which make the prediction vague). Each neighbour's own fit
    ``b + a n + c n'`` (:func:`_median_of_neighbours`) carries the residual only if
    that neighbour is hit, so the hit ones stand apart from the median, towards the
    voxel's value ``x`` (also those left out of the median because they
    extrapolate: a residual of their own puts their value at the centre far
    outside their range over the window; but so does a line narrower than the
    planes beside the centre, so where another neighbour peaks at the centre
    beyond ``candidate_sigma`` times its ERR (``nb_err``), only those whose peak
    there is at most twice the voxel's, from its values ``x_before`` and
    ``x_after`` on the planes either side: a residual's spread is about as high
    in the neighbours it hits, while on a point source's wing the neighbours
    towards the peak are many times higher). The caller has found ``median`` (with
    ``cand``, ``lev`` and ``keep`` filled and ``deriv`` the window's gradients) to
    sit beyond ``_DISSENT_SIGMA`` from ``x``; where such neighbours are a
    minority, the fits are made again without them (the one without the planes
    next to the centre where the first misses one of them and it either predicts
    the other or agrees with the median of the remaining neighbours' single fits:
    a residual over three planes leaves tails on both sides). The result is
    returned if it agrees with that median and is more precise than the first
    prediction (``value0``, ``variance0``), or the first prediction does not agree
    with it; otherwise NaN. (Where the joint fit without the siding neighbours misses
    a plane next to the centre by more than ``_SIDING_TAIL_SIGMA`` on the voxel's
    side, the fit without those planes may serve too, if it is more precise than
    the first prediction: the residual's other plane in the voxel's own spectrum.)
    With ``only_extrapolating`` (a refit), only the neighbours that extrapolate
    may side. ``n_val``, ``basis``, ``weight`` and ``nb_var`` (as for
    :func:`_fit_window`, with ``floor_above``) are overwritten.
    """
    step = x - median
    bound = _SIDING * np.sqrt(_finite_median(lev, keep, buf))
    # neighbours left out of the median because they extrapolate (their value here
    # far outside their range over the window) may side too: a residual of their
    # own, or a line narrower than the planes beside this one, which then peaks
    # here in the others too (fainter), and many times higher than the voxel in
    # the neighbours towards a point source's peak
    sg = np.sign(step)
    inner = 0 < centre < length - 1
    peaked = not inner
    for q in range(8):
        if inner:
            bump[q] = sg * n_val[centre, q] - max(sg * n_val[centre - 1, q],
                                                  sg * n_val[centre + 1, q])
            if keep[q] and bump[q] > candidate_sigma * nb_err[q]:
                peaked = True
    own_bump = -np.inf
    if np.isfinite(x_before) and np.isfinite(x_after):
        own_bump = sg * x - max(sg * x_before, sg * x_after)
    for q in range(8):
        # which neighbours may side: those in the median (not in a refit), and an
        # extrapolating one where no other neighbour peaks on this plane, or where
        # its own peak here is at most twice the voxel's
        if keep[q]:
            eligible[q] = not only_extrapolating
        else:
            eligible[q] = use[q] and inner and (not peaked or bump[q] <= 2.0 * own_bump)
    n_side = 0
    for q in range(8):
        side[q] = eligible[q] and (cand[q] - median) * sg > bound
        n_side += side[q]
    # measured from the median of the others, more may side with the voxel: two
    # strongly hit neighbours pull the median of all towards the voxel, and a
    # third, less hit one (a brighter spaxel, whose fit scales the residual down)
    # stays within the bound of it
    for _ in range(_SIDING_ROUNDS):
        if n_side == 0:
            break
        for q in range(8):
            kept[q] = keep[q] and not side[q]
        rest = _finite_median(cand, kept, buf)
        added = 0
        for q in range(8):
            if eligible[q] and not side[q] and (cand[q] - rest) * sg > bound:
                side[q] = True
                added += 1
        if added == 0:
            break
        n_side += added
    if n_side == 0 or 2 * n_side >= n_use:
        return np.nan, np.nan
    for q in range(8):
        if side[q]:
            nb_var[q] = 0.0
    for j in range(length):
        for q in range(8):
            if side[q]:
                n_val[j, q] = 0.0
        _basis_row(n_val, basis, j)
    for j in range(length):
        weight[j] = given[j]
    value, variance, adjacent = _fit_window(basis, wv, weight, length, centre, rank, e2,
                                            model_error, chol, inv, coef, resid, scratch,
                                            nb_var, floor_above)
    # (the joint fit's residual on the plane next to the voxel it misses worse)
    side_resid = 0.0
    if 0 < centre < length - 1:
        if given[centre + 1] * resid[centre + 1] ** 2 > given[centre - 1] * resid[centre - 1] ** 2:
            side_resid = resid[centre + 1]
        else:
            side_resid = resid[centre - 1]
    _without_sides(given, weight, length, centre)
    value3, variance3, _ = _fit_window(basis, wv, weight, length, centre, rank, e2,
                                       model_error, chol, inv, coef, resid, scratch, nb_var,
                                       floor_above)
    # the fit without the planes next to the voxel may serve where the joint fit misses
    # one of them by a residual's tail: beyond _TAIL_SIGMA, or beyond
    # _SIDING_TAIL_SIGMA on the side of the voxel's own excess where it is also more
    # precise than the first prediction (the siding neighbours' share of a residual
    # over two planes explained its other plane in the voxel's spectrum; without
    # them the joint fit misses it and is vague for it)
    wider = variance3 < variance and (
        adjacent > _TAIL_SIGMA
        or (adjacent > _SIDING_TAIL_SIGMA and side_resid * (x - value3) > 0.0
            and variance3 < variance0))
    predicts_a_side = wider and _predicts_a_side(basis, wv, given, length, centre, chol, coef,
                                                 scratch[:_N_BASIS])
    _without_sides(given, weight, length, centre)
    for q in range(8):
        kept[q] = use[q] and not side[q]
    rest, rest_var = _median_of_neighbours(wv, weight, n_val, deriv, kept, length, centre,
                                           cand, lev, keep, deviation, buf, sums)
    # (where it misses both planes next to the voxel, it is taken only if the
    # other neighbours' single fits agree: a residual over three planes, not a
    # sharp core the basis cannot follow)
    if wider and (predicts_a_side
                  or abs(value3 - rest) < _CHECK_SIGMA * np.sqrt(variance3 + rest_var)):
        value = value3
        variance = variance3
    if not abs(value - rest) < _CHECK_SIGMA * np.sqrt(variance + rest_var):
        return np.nan, np.nan
    if not (variance < variance0
            or abs(value0 - rest) > _CHECK_SIGMA * np.sqrt(variance0 + rest_var)):
        return np.nan, np.nan
    return value, variance


@njit(**_JIT)
def _median_of_neighbours(wv, weight, n_val, deriv, use, length, centre, cand, lev, keep,
                          deviation, buf, sums):
    """Median over neighbours of the fits ``b + a n + c n'`` at the centre, and its variance.

    ``weight`` leaves out the centre and the planes next to it; ``deriv`` is each
    neighbour's ``np.gradient`` along the window. A neighbour whose
    leverage exceeds ten times the typical one (it extrapolates) is left out; NaN
    where fewer than three take part.
    """
    # normal equations of the fits (sums over the window), inverted by cofactors;
    # the sums of the constant term are the same for every neighbour, the others
    # are summed for all eight in one pass over the planes (``sums[:, q]``)
    sum_w = 0.0
    sum_wy = 0.0
    for r in range(7):
        for q in range(8):
            sums[r, q] = 0.0
    for j in range(length):
        w = weight[j]
        if w > 0.0:
            sum_w += w
            y_j = wv[j]
            sum_wy += w * y_j
            for q in range(8):
                n = n_val[j, q]
                d = deriv[j, q]
                wn = w * n
                wd = w * d
                sums[0, q] += wn
                sums[1, q] += wd
                sums[2, q] += wn * n
                sums[3, q] += wn * d
                sums[4, q] += wd * d
                sums[5, q] += wn * y_j
                sums[6, q] += wd * y_j
    for q in range(8):
        cand[q] = np.nan
        lev[q] = np.nan
        if not use[q]:
            continue
        a00 = sum_w
        r0 = sum_wy
        a01 = sums[0, q]
        a02 = sums[1, q]
        a11 = sums[2, q]
        a12 = sums[3, q]
        a22 = sums[4, q]
        r1 = sums[5, q]
        r2 = sums[6, q]
        ridge = 1e-10 * (a00 + a11 + a22) + 1e-300
        a00 += ridge
        a11 += ridge
        a22 += ridge
        c00 = a11 * a22 - a12 * a12
        c01 = a02 * a12 - a01 * a22
        c02 = a01 * a12 - a02 * a11
        c11 = a00 * a22 - a02 * a02
        c12 = a01 * a02 - a00 * a12
        c22 = a00 * a11 - a01 * a01
        scale = 1.0 / (a00 * c00 + a01 * c01 + a02 * c02)
        v1 = n_val[centre, q]
        v2 = deriv[centre, q]
        # inv @ v for v = (1, n, n') at the centre; the prediction is v . inv . rhs
        u0 = (c00 + c01 * v1 + c02 * v2) * scale
        u1 = (c01 + c11 * v1 + c12 * v2) * scale
        u2 = (c02 + c12 * v1 + c22 * v2) * scale
        cand[q] = u0 * r0 + u1 * r1 + u2 * r2
        lev[q] = u0 + u1 * v1 + u2 * v2
    typical_lev = _finite_median(lev, use, buf)
    count = 0
    for q in range(8):
        keep[q] = use[q] and lev[q] <= 10.0 * typical_lev
        count += keep[q]
    med = _finite_median(cand, keep, buf)
    for q in range(8):
        deviation[q] = abs(cand[q] - med)
    spread = 1.4826 * _finite_median(deviation, keep, buf)
    typical = _finite_median(lev, keep, buf)
    var = max(spread * spread, typical) if np.isfinite(spread) and np.isfinite(typical) \
        else np.nan
    if count < 3:
        return np.nan, np.nan
    return med, var


@njit(**_JIT)
def _fill_holes(n_val, length):
    """Each NaN of ``n_val[:length]`` (at most one per neighbour) set to the mean of
    the values either side of it along the window, or at the window's ends to the
    one next to it."""
    for q in range(8):
        for j in range(length):
            if np.isnan(n_val[j, q]):
                if j == 0:
                    n_val[j, q] = n_val[1, q]
                elif j == length - 1:
                    n_val[j, q] = n_val[j - 1, q]
                else:
                    n_val[j, q] = 0.5 * (n_val[j - 1, q] + n_val[j + 1, q])


@njit(**_JIT)
def _gradients(n_val, length, deriv):
    """``deriv[:, q]``: ``np.gradient`` of each neighbour's window (one-sided at the ends)."""
    for q in range(8):
        if length < 2:
            deriv[0, q] = 0.0
            continue
        deriv[0, q] = n_val[1, q] - n_val[0, q]
        for j in range(1, length - 1):
            deriv[j, q] = 0.5 * (n_val[j + 1, q] - n_val[j - 1, q])
        deriv[length - 1, q] = n_val[length - 1, q] - n_val[length - 2, q]


@njit(**_JIT)
def predict_voxels(y, e, usable, unusable_before, exclude_a, exclude_b, repaired,
                   repaired_value, any_repaired, any_broken, own_repaired, drop_adjacent,
                   neighbours, ks, ss,
                   half_window, model_error, screen, bright, use_screen, candidate_sigma,
                   bright_snr, value_out, variance_out, aside_out):
    """Predictions and their variances for the voxels ``(ks[i], ss[i])``.

    Parameters
    ----------
    y, e : ndarray, shape (n_planes, m)
        Flux and ERR (float64).
    usable : ndarray of bool
        Voxels that hold usable data.
    unusable_before : ndarray of int32, shape (n_planes + 1, m)
        From :func:`count_unusable`.
    exclude_a, exclude_b : ndarray of bool
        Voxels a spaxel's own fit may not use (besides unusable ones).
    repaired, repaired_value : ndarray
        Where ``repaired`` and ``repaired_value`` is finite, a neighbour's spectrum
        takes ``repaired_value`` instead of ``y``; where ``repaired`` and it is not
        finite, the neighbour is not used. A neighbour is used for a voxel only
        if it is usable on the voxel's plane and on every plane of the window but
        at most ``_NEIGHBOUR_HOLES`` (none with ``drop_adjacent``; the fit then
        drops those planes, and the neighbour's value there is filled in from the
        planes either side for its slope), and not if it is repaired on the
        voxel's own plane while such neighbours are a minority.
    any_repaired, any_broken : bool
        Whether ``repaired`` marks any voxel, and any without a finite value (when
        not, those arrays are not read).
    own_repaired : bool
        The spaxel's own window is read repaired too, and only unusable voxels are
        left out of it (``exclude_a`` and ``exclude_b`` are ignored).
    drop_adjacent : bool
        Neighbours repaired on a plane next to the voxel's count as repaired on it
        (left out of the basis when a minority): the tail check's fits, where a
        residual spanning spaxels and planes has unflagged tails in them.
    neighbours : ndarray of int64, shape (8, m)
    ks, ss : ndarray of int64
    half_window : int
    model_error : float
    screen, bright : ndarray
        The screen's normalised residual and where spectra are bright; read only
        when ``use_screen``.
    candidate_sigma : float
    bright_snr : float
        A joint fit's prediction on a bright spectrum, or above ``bright_snr`` x
        ERR, is stated no more precise than the noise of the neighbour values it
        combines (see :func:`_fit_window`).
    value_out, variance_out : ndarray of float64, shape (len(ks),)
        Filled with the predictions and variances (NaN where too few points).
    aside_out : ndarray of uint8, shape (len(ks),)
        Bit ``q`` set where the prediction is step (4)'s, made without neighbour
        ``q`` because its single fit sided with the voxel (0 elsewhere).
    """
    n_planes = y.shape[0]
    length = min(2 * half_window + 1, n_planes)
    wv = np.empty(length)
    weight = np.empty(length)
    weight3 = np.empty(length)
    given = np.empty(length)
    n_val = np.empty((length, 8))
    deriv = np.empty((length, 8))
    basis = np.empty((length, _N_BASIS))
    use = np.empty(8, np.bool_)
    holed_nb = np.empty(8, np.bool_)
    level = np.empty(8)
    cand = np.empty(8)
    lev = np.empty(8)
    keep = np.empty(8, np.bool_)
    side = np.empty(8, np.bool_)
    kept = np.empty(8, np.bool_)
    deviation = np.empty(8)
    sums = np.empty((7, 8))
    nb_err = np.empty(8)
    eligible = np.empty(8, np.bool_)
    bump = np.empty(8)
    buf = np.empty(max(length, 8))
    chol = np.empty((_N_BASIS, _N_BASIS))
    inv = np.empty((_N_BASIS, _N_BASIS))
    coef = np.empty(_N_BASIS)
    resid = np.empty(length)
    scratch = np.empty(_N_BASIS + length)
    nb_var = np.empty(8)
    for i in range(ks.size):
        k = ks[i]
        s = ss[i]
        aside = 0
        first = min(max(k - half_window, 0), n_planes - length)
        centre = k - first
        for j in range(length):
            kk = first + j
            if own_repaired:
                ok = usable[kk, s]
                v = y[kk, s]
                if repaired[kk, s] and np.isfinite(repaired_value[kk, s]):
                    v = repaired_value[kk, s]
            else:
                ok = usable[kk, s] and not exclude_a[kk, s] and not exclude_b[kk, s]
                v = y[kk, s]
            if ok:
                wv[j] = v
                weight[j] = 1.0 / (e[kk, s] * e[kk, s])
            else:
                wv[j] = 0.0
                weight[j] = 0.0
        n_use = 0
        for q in range(8):
            nb = neighbours[q, s]
            # (a hole costs the fit a plane; the tail check's fits, which do without
            # a residual's planes and those next to them, leave such a neighbour
            # out instead)
            holes = unusable_before[first + length, nb] - unusable_before[first, nb] \
                if nb >= 0 else 0
            # (k lies in the window: without holes it is usable there)
            ok = nb >= 0 and (holes == 0 or holes <= (0 if drop_adjacent else _NEIGHBOUR_HOLES)
                              and usable[k, nb])
            holed_nb[q] = ok and holes > 0
            if ok and any_broken:
                for j in range(length):
                    kk = first + j
                    if repaired[kk, nb] and not np.isfinite(repaired_value[kk, nb]):
                        ok = False
                        break
            use[q] = ok
            if ok:
                n_use += 1
        # neighbours flagged on this plane are left out of the basis when they are
        # a minority: their repaired value is a prediction, uncertain by several
        # ERR on a bright line, and their unflagged planes around it carry the
        # residual's tails; and the residual, spanning spaxels, may span the
        # planes next to this one (``tainted``)
        tainted = False
        if any_repaired and n_use > 0:
            n_hit = 0
            for q in range(8):
                nb = neighbours[q, s]
                keep[q] = use[q] and (repaired[k, nb] or drop_adjacent and (
                    k > 0 and repaired[k - 1, nb] or k < n_planes - 1 and repaired[k + 1, nb]))
                n_hit += keep[q]
            if 2 * n_hit <= n_use:
                tainted = n_hit > 0
                for q in range(8):
                    if keep[q]:
                        use[q] = False
                        n_use -= 1
        if use_screen and n_use > 0:
            # neighbours that stand out from their own spectrum on this plane are
            # left out of the basis when they are fewer than half (not when exactly
            # half: a velocity gradient moves a narrow line's peak onto this plane
            # in half the neighbours, and leaving those out leaves a basis without
            # the line's shape here)
            n = 0
            for q in range(8):
                if use[q]:
                    level[q] = abs(screen[k, neighbours[q, s]])
                    buf[n] = level[q]
                    n += 1
            typical = _median(buf, n)
            n_hit = 0
            for q in range(8):
                if use[q]:
                    nb = neighbours[q, s]
                    hit = level[q] > candidate_sigma and (
                        not bright[k, nb] or level[q] > 4.0 * typical + candidate_sigma)
                    level[q] = 1.0 if hit else 0.0
                    n_hit += hit
            if 2 * n_hit < n_use:
                for q in range(8):
                    if use[q] and level[q] > 0.0:
                        use[q] = False
                        n_use -= 1
        for j in range(length):
            kk = first + j
            for q in range(8):
                if not use[q]:
                    n_val[j, q] = 0.0
                elif any_repaired:
                    # (written out: arrays passed to a helper in this loop cost two
                    # reference-count updates per call, a third of the refits' time)
                    nb = neighbours[q, s]
                    v = y[kk, nb]
                    if repaired[kk, nb] and np.isfinite(repaired_value[kk, nb]):
                        v = repaired_value[kk, nb]
                    n_val[j, q] = v
                else:
                    n_val[j, q] = y[kk, neighbours[q, s]]
            _basis_row(n_val, basis, j)
        # a hole in a neighbour's window: the plane is dropped from the fit, and the
        # neighbour's value there filled in for its slope (apart from the loop
        # above, which stays as fast as without holes)
        holed = False
        for q in range(8):
            if use[q] and holed_nb[q]:
                nb = neighbours[q, s]
                for j in range(length):
                    if not usable[first + j, nb]:
                        n_val[j, q] = np.nan
                        weight[j] = 0.0
                        holed = True
        if holed:
            _fill_holes(n_val, length)
            for j in range(length):
                _basis_row(n_val, basis, j)
        rank = 5 if n_use > 0 else 1
        e2 = e[k, s] * e[k, s]
        for q in range(8):
            nb_var[q] = e[k, neighbours[q, s]] ** 2 if use[q] else 0.0
        on_bright = use_screen and bright[k, s]
        floor_above = -np.inf if on_bright else bright_snr * e[k, s]
        weight[centre] = 0.0
        for j in range(length):
            given[j] = weight[j]
        _without_sides(given, weight3, length, centre)
        # (1) the joint fit without the voxel; (2) also without the planes next to
        # it; (3) the median of single-neighbour fits, where the neighbours hold no
        # signal on this plane nor a slope across it (a line's edge: the single
        # fits follow it through n', and a residual in the window leads them all
        # astray alike). (2) is made where it can be chosen, (3) where quiet.
        # (``level`` is free again here: it holds the slopes)
        n = 0
        n_slope = 0
        for q in range(8):
            if use[q]:
                nb = neighbours[q, s]
                v = abs(n_val[centre, q]) / e[k, nb]
                if np.isfinite(v):
                    buf[n] = v
                    n += 1
                if 0 < centre < length - 1:
                    v = 0.5 * abs(n_val[centre + 1, q] - n_val[centre - 1, q]) / e[k, nb]
                    if np.isfinite(v):
                        level[n_slope] = v
                        n_slope += 1
        quiet = not (_median(buf, n) > _QUIET) and not (_median(level, n_slope) > _QUIET)
        value, variance, adjacent = _fit_window(basis, wv, weight, length, centre, rank, e2,
                                                model_error, chol, inv, coef, resid, scratch,
                                                nb_var, floor_above)
        if quiet or not on_bright or adjacent > _TAIL_SIGMA or tainted:
            # on a bright, sharply peaked spectrum the fit without the planes next
            # to the voxel extrapolates the peak from its wings, and undershoots
            # it: it is used there only when the first fit misses a plane next to
            # the voxel badly (the tail of a residual) or a flagged neighbour was
            # left out
            value3, variance3, _ = _fit_window(basis, wv, weight3, length, centre, rank, e2,
                                               model_error, chol, inv, coef, resid, scratch,
                                               nb_var, floor_above)
            if variance3 < variance and (not on_bright or adjacent > _TAIL_SIGMA or tainted):
                value = value3
                variance = variance3
        if not quiet and (not any_repaired or not on_bright) and n_use > 3 \
                and variance > _VAGUE * e2:
            # (4) a vague first prediction: the same fits without the neighbours
            # that side with the voxel, taken where the others' single fits
            # confirm it (see _without_siding_neighbours); in a refit on a faint
            # spectrum, without those that extrapolate only
            # (the dissent test is made here, before the call: most vague
            # predictions stop at it, and the call, passing some thirty arrays,
            # costs more than the test)
            _gradients(n_val, length, deriv)
            _without_sides(given, weight3, length, centre)
            median, median_var = _median_of_neighbours(wv, weight3, n_val, deriv, use,
                                                       length, centre, cand, lev, keep,
                                                       deviation, buf, sums)
            value4 = variance4 = np.nan
            if abs(y[k, s] - median) > _DISSENT_SIGMA * np.sqrt(e2 + median_var):
                for q in range(8):
                    nb_err[q] = e[k, neighbours[q, s]] if use[q] else np.nan
                # (the voxel's own values on the planes either side, NaN where unusable)
                x_before = y[k - 1, s] if k > 0 and usable[k - 1, s] else np.nan
                x_after = y[k + 1, s] if k < n_planes - 1 and usable[k + 1, s] else np.nan
                value4, variance4 = _without_siding_neighbours(
                    y[k, s], median, value, variance, wv, given, weight3, n_val, deriv, use,
                    n_use, nb_err, x_before, x_after, candidate_sigma, basis, length, centre,
                    rank, e2, model_error, side, kept, eligible, bump, cand, lev, keep,
                    deviation, buf, sums, chol, inv, coef, resid, scratch, any_repaired,
                    nb_var, floor_above)
            if np.isfinite(value4):
                value = value4
                variance = variance4
                for q in range(8):
                    if side[q]:
                        aside |= 1 << q
        if quiet:
            _gradients(n_val, length, deriv)
            value_nb, variance_nb = _median_of_neighbours(wv, weight3, n_val, deriv, use,
                                                          length, centre, cand, lev, keep,
                                                          deviation, buf, sums)
            # the joint fit is replaced where it disagrees with the median beyond
            # their uncertainties (a neighbour spoiled it), or is the less precise
            if (abs(value - value_nb) > 3.0 * np.sqrt(variance + variance_nb)
                    or variance > variance_nb):
                value = value_nb
                variance = variance_nb
        value_out[i] = value
        variance_out[i] = variance
        aside_out[i] = aside


@njit(**_JIT)
def count_unusable(usable, out):
    """``out[k, s]``: how many of spaxel ``s``'s planes before ``k`` are unusable."""
    n_planes, m = usable.shape
    for s in range(m):
        out[0, s] = 0
    for k in range(n_planes):
        for s in range(m):
            out[k + 1, s] = out[k, s] + (0 if usable[k, s] else 1)


@njit(**_JIT)
def sum_fit_voxels(y, e, usable, unusable_before, exclude, repaired, repaired_value, neighbours,
                   ks, ss, half_window, value_out, variance_out):
    """Replacement values from a two-term fit on the summed neighbour spectrum.

    Over the planes ``k-H..k+H`` without ``k``, the voxel's spectrum is fitted as
    ``b + a * S`` (weights 1/ERR^2), where ``S`` sums the neighbours usable on the
    voxel's plane and on every plane of the window but at most ``_NEIGHBOUR_HOLES``,
    whose planes the fit drops (read repaired, as in :func:`predict_voxels`); one point
    missed beyond 4 ERR and four times the typical miss is dropped once. On a faint
    spectrum the five-term fit of :func:`predict_voxels` regresses on five noisy
    spectra, and its slopes, hence its predicted line peaks, come out diluted towards
    zero; one summed spectrum has the least noise relative to its signal. What
    dilution is left is filled in: the fitted slope is ``rel`` times the true one,
    ``rel`` the reliability of ``S`` (its weighted spread over the window less the
    part its ERR explains, over its spread, clipped to 0..1), and ``(1 - rel) / n``
    is added to it, ``n`` the number of neighbours summed. That is Kelley's
    reliability-weighted estimate with the prior that a spaxel follows the mean of
    its neighbours: where ``S`` holds a clear signal the fitted slope stands, where
    it is noise the prior does, and in between each has the weight it has earned.
    (Dividing by ``rel`` instead, the method-of-moments correction, amplifies noise
    where ``rel`` is small, and leaving the slope as fitted there kept faint
    replacements 0.3-0.5 ERR low.)

    Parameters
    ----------
    y, e, usable, unusable_before, repaired, repaired_value, neighbours, ks, ss
        As for :func:`predict_voxels`.
    exclude : ndarray of bool
        Voxels the spaxel's own fit may not use (besides unusable ones).
    half_window : int
    value_out, variance_out : ndarray of float64, shape (len(ks),)
        The fit at ``k`` and its variance: the fit's propagated noise (scaled by
        the reduced chi-square, at least 1) plus ``a^2`` times the noise of ``S``
        at ``k``. NaN where fewer than three neighbours or ``_MIN_FIT_POINTS``
        planes can be used.
    """
    n_planes = y.shape[0]
    length = min(2 * half_window + 1, n_planes)
    total = np.empty(length)
    noise = np.empty(length)
    column = np.empty(length)
    own = np.empty(length)
    weight = np.empty(length)
    resid = np.empty(length)
    buf = np.empty(length)
    holes = np.empty(length, np.bool_)
    for i in range(ks.size):
        k = ks[i]
        s = ss[i]
        value_out[i] = np.nan
        variance_out[i] = np.nan
        first = min(max(k - half_window, 0), n_planes - length)
        centre = k - first
        for j in range(length):
            total[j] = 0.0
            noise[j] = 0.0
        noise_at_k = 0.0
        n_use = 0
        for j in range(length):
            holes[j] = False
        for q in range(8):
            nb = neighbours[q, s]
            if nb < 0:
                continue
            n_holes = unusable_before[first + length, nb] - unusable_before[first, nb]
            if n_holes > _NEIGHBOUR_HOLES or not usable[k, nb]:
                continue
            ok = True
            for j in range(length):
                kk = first + j
                column[j] = y[kk, nb]
                if n_holes and not usable[kk, nb]:
                    continue  # a hole: the fit drops this plane
                if repaired[kk, nb] and np.isfinite(repaired_value[kk, nb]):
                    column[j] = repaired_value[kk, nb]
                ok = ok and np.isfinite(column[j])
            if not ok:
                continue
            n_use += 1
            for j in range(length):
                kk = first + j
                if n_holes and not usable[kk, nb]:
                    holes[j] = True
                else:
                    total[j] += column[j]
                    noise[j] += e[kk, nb] * e[kk, nb]
            noise_at_k += e[k, nb] * e[k, nb]
        if n_use < 3:
            continue
        for j in range(length):
            kk = first + j
            ok = j != centre and usable[kk, s] and not exclude[kk, s] and not holes[j]
            weight[j] = 1.0 / (e[kk, s] * e[kk, s]) if ok else 0.0
            own[j] = y[kk, s] if ok else 0.0
        for attempt in range(2):
            a00 = a01 = a11 = r0 = r1 = 0.0
            n_fit = 0
            for j in range(length):
                w = weight[j]
                if w > 0.0:
                    n_fit += 1
                    a00 += w
                    a01 += w * total[j]
                    a11 += w * total[j] * total[j]
                    r0 += w * own[j]
                    r1 += w * total[j] * own[j]
            det = a00 * a11 - a01 * a01
            if n_fit < _MIN_FIT_POINTS or not det > 1e-12 * a00 * a11:
                n_fit = 0
                break
            b = (a11 * r0 - a01 * r1) / det
            a = (a00 * r1 - a01 * r0) / det
            chi2 = 0.0
            worst = 0
            worst_t2 = -1.0
            m = 0
            for j in range(length):
                if weight[j] > 0.0:
                    resid[j] = own[j] - b - a * total[j]
                    t2 = weight[j] * resid[j] * resid[j]
                    chi2 += t2
                    buf[m] = t2
                    m += 1
                    if t2 > worst_t2:
                        worst_t2 = t2
                        worst = j
            if attempt == 1 or not worst_t2 > 16.0:
                break
            if not np.sqrt(worst_t2) > 4.0 * np.sqrt(_median(buf, m)) / 0.6745:
                break
            weight[worst] = 0.0
        if n_fit == 0:
            continue
        at = total[centre]
        # the slope of a regression on a noisy S is diluted by the reliability
        # (S's spread beyond its noise over its spread); what it took is filled in
        # by the prior slope 1/n (the spaxel follows the mean of its neighbours)
        spread = a11 - a01 * a01 / a00
        noise_spread = 0.0
        for j in range(length):
            if weight[j] > 0.0:
                noise_spread += weight[j] * noise[j] * (1.0 - weight[j] / a00)
        reliability = (spread - noise_spread) / spread
        a += (1.0 - min(max(reliability, 0.0), 1.0)) / n_use
        b = (r0 - a * a01) / a00
        leverage = (a11 - 2.0 * a01 * at + a00 * at * at) / det
        value_out[i] = b + a * at
        variance_out[i] = leverage * max(chi2 / (n_fit - 2), 1.0) + a * a * noise_at_k
