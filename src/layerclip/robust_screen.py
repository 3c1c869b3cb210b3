"""Compiled screen, scale, ceiling and growth kernels of robust mode (numba).

The loops over every voxel of a block, or over the voxels near flags, that
:mod:`layerclip.robust` runs around its fits:

* a block's set-up: its spaxels gathered and cast in one pass
  (:func:`gather_columns`) and its usable voxels (:func:`usable_voxels`);
* the screen: each voxel's residual from its own spectrum's baseline
  (:func:`spectral_baseline`, :func:`screen_residual`) and the verdicts on it
  (:func:`screen_voxels`);
* the noise scale: per-plane medians of the residuals (:func:`plane_mad`,
  :func:`noise_residual_median`), by quickselect (:func:`_select_pair`);
* the neighbour ceiling: the ``rank``-th brightest neighbour's peak
  (:func:`neighbour_ceiling`) and whether a good neighbour supports a voxel
  (:func:`supported`);
* growing flags to adjacent voxels (:func:`grow_flags`) and finding the voxels
  near them (:func:`near_flags`).

Like the fits, the functions take plain arrays only, release the GIL and are
cached on disk after their first compilation.

The compile options ``_JIT`` and the small sort ``_sort_few`` come from
:mod:`layerclip.robust_fits`. numba's disk cache notices changes to a function's
own file only: after changing ``_sort_few`` there, delete
``src/layerclip/__pycache__/robust_screen.*`` so that the functions here that call
it are compiled again.

See Also
--------
layerclip.robust_fits : the other compiled half: the per-voxel prediction fits.
layerclip.robust : the stages that call these kernels, and the method.
"""

import numpy as np
from numba import njit

from .robust_fits import _JIT, _sort_few

# A bright spectrum the screen's baseline follows this many planes either side is smooth.
_SMOOTH_PLANES = 3


@njit(**_JIT)
def gather_columns(planes, index, out):
    """``out[k, i] = planes[k, index[i]]``, converted to ``out``'s dtype.

    A block's spaxels, compacted and cast in one pass (``np.take`` then
    ``astype`` makes two, and takes longer).
    """
    for k in range(out.shape[0]):
        for i in range(index.size):
            out[k, i] = planes[k, index[i]]


@njit(**_JIT)
def usable_voxels(y, e, out):
    """``out``: where ``y`` is finite and ``e`` finite and positive, in one pass."""
    n_planes, m = y.shape
    for k in range(n_planes):
        for s in range(m):
            v = e[k, s]
            out[k, s] = np.isfinite(y[k, s]) and np.isfinite(v) and v > 0.0


@njit(**_JIT)
def spectral_baseline(y, usable, k, s):
    """Median of spaxel ``s``'s usable values at planes ``k-3, k-2, k+2, k+3`` (NaN if none)."""
    n_planes = y.shape[0]
    count = 0
    total = 0.0
    hi = -np.inf
    lo = np.inf
    for d in (-3, -2, 2, 3):
        kk = k + d
        if 0 <= kk < n_planes and usable[kk, s]:
            v = y[kk, s]
            total += v
            hi = max(hi, v)
            lo = min(lo, v)
            count += 1
    if count == 4:
        return 0.5 * (total - hi - lo)
    if count == 3:
        return total - hi - lo
    if count == 2:
        return 0.5 * total
    if count == 1:
        return total
    return np.nan


@njit(**_JIT)
def _select(values, n, kth, work_a, work_b):
    """The ``kth`` smallest of ``values[:n]``, which may be reordered (see :func:`_select_pair`)."""
    return _select_pair(values, n, kth, work_a, work_b)[1]


@njit(**_JIT)
def _select_pair(values, n, kth, work_a, work_b):
    """The ``kth - 1``-th and ``kth``-th smallest of ``values[:n]`` (-inf for the first
    when ``kth`` is 0); ``values`` may be reordered.

    Quickselect with a median-of-three pivot, partitioning into the scratch arrays
    ``work_a`` and ``work_b`` (each at least ``n`` long) by counting instead of by
    branching: the branch in a classic partition is mispredicted half the time on
    noise, which made it three times slower on the per-plane medians. The value
    below the ``kth`` comes with it almost for free (the largest value discarded
    below the part searched, or the neighbour in the last few values sorted), where
    a separate pass for it, whose conditional maximum compiles to a branch,
    took twice as long as the selection itself.
    """
    src = values
    into_a = True
    floor = -np.inf  # the largest value discarded below src (all of src is above it)
    while n > 16:
        a, b, c = src[0], src[n // 2], src[n - 1]
        pivot = max(min(a, b), min(max(a, b), c))
        dst = work_a if into_a else work_b
        n_below = 0
        for i in range(n):
            v = src[i]
            dst[n_below] = v
            n_below += v < pivot
        if kth < n_below:
            src, n, into_a = dst, n_below, not into_a
            continue
        if kth == n_below:
            # the pivot, right above the values below it (in dst[:n_below])
            return max(floor, _largest(dst, n_below)), pivot
        n_above = 0
        for i in range(n):
            v = src[i]
            dst[n_above] = v
            n_above += v > pivot
        if kth < n - n_above:
            return pivot, pivot  # kth - 1 is not below the pivot either
        kth -= n - n_above
        floor = pivot
        src, n, into_a = dst, n_above, not into_a
    _sort_few(src, n)
    return (src[kth - 1] if kth > 0 else floor), src[kth]


@njit(**_JIT)
def _largest(values, n):
    """The largest of ``values[:n]`` (-inf when ``n`` is 0)."""
    out = -np.inf
    for i in range(n):
        out = max(out, values[i])
    return out


@njit(**_JIT)
def screen_residual(y, e, usable, bright_snr, residual, bright):
    """The screen's residual ``(y - baseline) / e`` and where spectra are bright, in place.

    The baseline is :func:`spectral_baseline`; the residual is NaN where it cannot
    be formed or the voxel is unusable. ``bright`` marks a baseline not below
    ``bright_snr`` x ERR (or none).
    """
    n_planes, m = y.shape
    for k in range(n_planes):
        if 3 <= k < n_planes - 3:
            # every spaxel as if its four baseline planes were usable (the same
            # arithmetic as spectral_baseline; without branches the loop
            # vectorises), then the spaxels where one is not, again
            for s in range(m):
                a, b, c, d = y[k - 3, s], y[k - 2, s], y[k + 2, s], y[k + 3, s]
                hi = max(max(a, b), max(c, d))
                lo = min(min(a, b), min(c, d))
                baseline = 0.5 * (a + b + c + d - hi - lo)
                r = (y[k, s] - baseline) / e[k, s]
                residual[k, s] = r if usable[k, s] else np.nan
                bright[k, s] = not (abs(baseline) <= bright_snr * e[k, s])
            for s in range(m):
                if not (usable[k - 3, s] and usable[k - 2, s] and usable[k + 2, s]
                        and usable[k + 3, s]):
                    _screen_voxel(y, e, usable, bright_snr, residual, bright, k, s)
        else:
            for s in range(m):
                _screen_voxel(y, e, usable, bright_snr, residual, bright, k, s)


@njit(**_JIT)
def _screen_voxel(y, e, usable, bright_snr, residual, bright, k, s):
    """:func:`screen_residual` for one voxel, by :func:`spectral_baseline`."""
    baseline = spectral_baseline(y, usable, k, s)
    r = (y[k, s] - baseline) / e[k, s]
    residual[k, s] = r if usable[k, s] else np.nan
    bright[k, s] = not (abs(baseline) <= bright_snr * e[k, s])


@njit(**_JIT)
def plane_mad(residual, cols, min_count, out):
    """Per plane, the median of the finite ``|residual|`` over the spaxels ``cols``.

    NaN where fewer than ``min_count`` values are finite.
    """
    n_planes = residual.shape[0]
    buf = np.empty(cols.size)
    work_a = np.empty(cols.size)
    work_b = np.empty(cols.size)
    for k in range(n_planes):
        n = 0
        for c in cols:
            v = residual[k, c]
            if np.isfinite(v):
                buf[n] = abs(v)
                n += 1
        out[k] = _median_of_many(buf, n, work_a, work_b) if n >= min_count else np.nan


@njit(**_JIT)
def _median_of_many(buf, n, work_a, work_b):
    """Median of ``buf[:n]`` (``n`` > 0; ``buf`` may be reordered), by quickselect."""
    lower, upper = _select_pair(buf, n, n // 2, work_a, work_b)
    return upper if n % 2 else 0.5 * (lower + upper)


@njit(**_JIT)
def noise_residual_median(y, e, usable, planes, cols, min_count, out):
    """For each plane ``k`` of ``planes``, the median over the spaxels ``cols`` of
    ``|y - baseline| / e``, the baseline being the median of planes ``k-3, k-2,
    k+2, k+3``, where those five planes are usable (each ``k`` at least three
    planes from either end); NaN where fewer than ``min_count`` are."""
    buf = np.empty(cols.size)
    work_a = np.empty(cols.size)
    work_b = np.empty(cols.size)
    for i in range(planes.size):
        k = planes[i]
        n = 0
        for c in cols:
            if not (usable[k, c] and usable[k - 3, c] and usable[k - 2, c]
                    and usable[k + 2, c] and usable[k + 3, c]):
                continue
            a, b, x, d = y[k - 3, c], y[k - 2, c], y[k + 2, c], y[k + 3, c]
            total = a + b + x + d
            baseline = 0.5 * (total - max(max(a, b), max(x, d)) - min(min(a, b), min(x, d)))
            buf[n] = abs(y[k, c] - baseline) / e[k, c]
            n += 1
        out[i] = _median_of_many(buf, n, work_a, work_b) if n >= min_count else np.nan


@njit(**_JIT)
def screen_voxels(rho, spread, usable, bright, neighbours, sigma, candidate_sigma, screen,
                  outlying, candidate):
    """The screen's verdicts for every voxel of a block, filled in place.

    ``rho`` holds the residual of :func:`screen_residual` and is divided by the
    plane's ``spread`` (0 where not finite); ``screen`` receives a copy.
    ``outlying`` marks faint voxels beyond ``sigma`` that most of their neighbours do
    not share (same sign, beyond ``candidate_sigma``); ``candidate`` marks usable
    voxels that are bright or beyond ``candidate_sigma``.

    Each plane gets the verdicts that need no more than the voxel itself first, in
    a loop without branches; the few voxels whose verdicts need their neighbours or
    their spectrum (0.3% of the voxels of the arc cube with 3x brighter targets) are
    then found eight at a time and decided by :func:`_screen_verdicts`. Deciding
    every voxel in one loop with those branches took twice as long.
    """
    n_planes, m = rho.shape
    for k in range(n_planes):
        inv_spread = 1.0 / spread[k]
        for s in range(m):
            r = rho[k, s]
            r = r * inv_spread if np.isfinite(r) else 0.0
            rho[k, s] = r
            screen[k, s] = r
    n_words = (m + 7) // 8
    rare = np.zeros(8 * n_words, np.bool_)
    rare_words = rare.view(np.uint64)
    for k in range(n_planes):
        _plain_verdicts(rho, usable, bright, sigma, candidate_sigma, outlying, candidate, rare,
                        k)
        for w in range(n_words):
            if rare_words[w]:
                for s in range(8 * w, min(8 * w + 8, m)):
                    if rare[s]:
                        _screen_verdicts(rho, usable, bright, neighbours, sigma,
                                         candidate_sigma, outlying, candidate, k, s)


@njit(**_JIT)
def _plain_verdicts(rho, usable, bright, sigma, candidate_sigma, outlying, candidate, rare, k):
    """:func:`screen_voxels`' verdicts on plane ``k`` from each voxel alone.

    ``rare[s]`` marks where they are not final: a faint voxel beyond ``sigma`` (its
    neighbours may share it) and a bright one within ``candidate_sigma`` (its
    spectrum may be smooth). Bitwise operators, not ``and``/``or``, keep the loop
    free of branches.
    """
    for s in range(rho.shape[1]):
        a = abs(rho[k, s])
        ok = usable[k, s]
        b = bright[k, s]
        beyond = a > sigma
        within = a <= candidate_sigma
        out = beyond & ~b & ok
        outlying[k, s] = out
        candidate[k, s] = ok & ~within
        rare[s] = out | (within & b)


@njit(**_JIT)
def _screen_verdicts(rho, usable, bright, neighbours, sigma, candidate_sigma, outlying,
                     candidate, k, s):
    """:func:`screen_voxels`' verdicts on voxel ``(k, s)``, everything considered."""
    n_planes = rho.shape[0]
    value = rho[k, s]
    out = abs(value) > sigma and not bright[k, s] and usable[k, s]
    if out:
        n_has = 0
        n_shared = 0
        sign = 1.0 if value > 0 else -1.0
        for q in range(8):
            nb = neighbours[q, s]
            if nb >= 0:
                n_has += 1
                if rho[k, nb] * sign > candidate_sigma:
                    n_shared += 1
        out = not (2 * n_shared > n_has)
    outlying[k, s] = out
    decided = abs(value) <= candidate_sigma
    if decided and bright[k, s]:
        # a bright spectrum that the baseline follows on every plane within
        # three of k (no line, no residual there) is smooth: the screen decides
        for kk in range(k - _SMOOTH_PLANES, k + _SMOOTH_PLANES + 1):
            if kk < 0 or kk >= n_planes or not usable[kk, s] \
                    or not abs(rho[kk, s]) <= candidate_sigma:
                decided = False
                break
    candidate[k, s] = usable[k, s] and not decided


@njit(**_JIT)
def grow_flags(ks, ss, rho, usable, neighbours, grow_sigma, steps, flags):
    """Flags at ``(ks, ss)`` grown ``steps`` times to adjacent voxels.

    Adjacent means one plane up or down in the same spaxel, or one of the eight
    neighbouring spaxels in the same plane; a voxel joins when it is usable and its
    ``rho`` has the flag's sign and exceeds ``grow_sigma``. ``flags`` (all False
    on entry) receives the mask; returns the planes and spaxels of every flag.
    """
    n_planes = rho.shape[0]
    out_k = np.empty(ks.size, np.int64)
    out_s = np.empty(ks.size, np.int64)
    n = 0
    for i in range(ks.size):
        if not flags[ks[i], ss[i]]:
            flags[ks[i], ss[i]] = True
            out_k[n] = ks[i]
            out_s[n] = ss[i]
            n += 1
    start = 0
    for _ in range(steps):
        stop = n
        if stop == start:
            break
        for i in range(start, stop):
            k, s = out_k[i], out_s[i]
            sign = np.sign(rho[k, s])
            for a in range(10):
                if a < 8:
                    kk, sa = k, neighbours[a, s]
                else:
                    kk, sa = (k - 1 if a == 8 else k + 1), s
                if sa < 0 or kk < 0 or kk >= n_planes:
                    continue
                if flags[kk, sa] or not usable[kk, sa] or not rho[kk, sa] * sign > grow_sigma:
                    continue
                flags[kk, sa] = True
                out_k, out_s = _append(out_k, out_s, n, kk, sa)
                n += 1
        start = stop
    return out_k[:n].copy(), out_s[:n].copy()


@njit(**_JIT)
def _append(out_k, out_s, n, k, s):
    """Store ``(k, s)`` at position ``n``, doubling both arrays when full; returns them."""
    if n == out_k.size:
        bigger_k = np.empty(max(2 * n, 16), np.int64)
        bigger_s = np.empty(max(2 * n, 16), np.int64)
        bigger_k[:n] = out_k
        bigger_s[:n] = out_s
        out_k, out_s = bigger_k, bigger_s
    out_k[n] = k
    out_s[n] = s
    return out_k, out_s


@njit(**_JIT)
def near_flags(fk, fs, neighbours, half_window, select_a, select_b, mark):
    """Voxels within ``half_window`` planes of a flag, in its spaxel or a neighbouring one.

    Only voxels where ``select_a`` or ``select_b`` holds are returned, each once;
    ``mark`` (all False on entry) is used to tell them apart.
    """
    n_planes = mark.shape[0]
    out_k = np.empty(16, np.int64)
    out_s = np.empty(16, np.int64)
    n = 0
    for i in range(fk.size):
        for a in range(9):
            sa = fs[i] if a == 8 else neighbours[a, fs[i]]
            if sa < 0:
                continue
            for kk in range(max(fk[i] - half_window, 0), min(fk[i] + half_window + 1, n_planes)):
                if mark[kk, sa] or not (select_a[kk, sa] or select_b[kk, sa]):
                    continue
                mark[kk, sa] = True
                out_k, out_s = _append(out_k, out_s, n, kk, sa)
                n += 1
    return out_k[:n].copy(), out_s[:n].copy()


@njit(**_JIT)
def neighbour_ceiling(y, usable, neighbours, ks, ss, half_span, rank, out):
    """For each voxel ``(ks[i], ss[i])``, the ``rank``-th brightest neighbour's peak.

    A neighbour's peak is its largest usable value within ``half_span`` planes of
    the voxel's plane (a real line moves by a plane or two between spaxels); the
    ``rank``-th largest of these over the eight neighbours ignores the ``rank - 1``
    that one residual spanning several spaxels may have hit. ``out[i]`` is NaN when
    fewer than ``rank`` neighbours have a usable plane there.
    """
    n_planes = y.shape[0]
    buf = np.empty(8)
    work_a = np.empty(8)
    work_b = np.empty(8)
    for i in range(ks.size):
        k = ks[i]
        s = ss[i]
        n = 0
        for q in range(8):
            nb = neighbours[q, s]
            if nb < 0:
                continue
            peak = -np.inf
            for kk in range(max(k - half_span, 0), min(k + half_span + 1, n_planes)):
                if usable[kk, nb] and y[kk, nb] > peak:
                    peak = y[kk, nb]
            if peak > -np.inf:
                buf[n] = -peak
                n += 1
        out[i] = -_select(buf, n, rank - 1, work_a, work_b) if n >= rank else np.nan


@njit(**_JIT)
def supported(y, usable, neighbours, ks, ss, limit, good, out):
    """Whether each voxel ``(ks[i], ss[i])`` has a neighbour on the same plane whose
    value is at least ``limit[i]`` and which is marked ``good``.

    A spaxel next to the peak of a point source sharper than its fourth brightest
    neighbour allows is supported by that peak; a residual spread over a few
    spaxels is supported only by the others it hit, which are not good.
    """
    for i in range(ks.size):
        k = ks[i]
        found = False
        for q in range(8):
            nb = neighbours[q, ss[i]]
            if nb >= 0 and usable[k, nb] and good[k, nb] and y[k, nb] >= limit[i]:
                found = True
                break
        out[i] = found
