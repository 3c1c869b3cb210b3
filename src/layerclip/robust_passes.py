"""Robust mode's decision passes: what runs on a block after the screen.

:func:`layerclip.robust.clip_block_robust` screens a block and then runs these
passes, in this order: :func:`_fit` predicts the candidates (by :func:`_predict`,
which calls the compiled fits) and judges them; :func:`_ceiling_flags` and
:func:`_keep_over_ceiling` apply the neighbour ceiling; :func:`_first_pass` keeps
the first verdicts (a :class:`_FirstPass`), whose flags :func:`_grow` grows;
:func:`_refit_passes` refits the candidates near flags, weighing each refit against
the first verdict (:func:`_settle_refits`); :func:`_flag_tails` checks the tails of
strong flags (:func:`_predict_tails`); :func:`_clear_echoes` clears the flags that
are only echoes of a neighbour's; and :func:`_replacement_values` gives the flags
their replacement values. The other functions are their helpers. The passes read
and update, in place, the arrays of a block ``b`` (a ``layerclip.robust._Block``).

The method is described in full in the docstring of :mod:`layerclip.robust` (the
"module notes" the docstrings below refer to) and in ``docs/robust-method.md``.
"""

from dataclasses import dataclass

import numpy as np

from .robust_fits import predict_voxels, sum_fit_voxels
from .robust_screen import (
    grow_flags,
    near_flags,
    neighbour_ceiling,
    spectral_baseline,
    supported,
)

# The variance of a median of four unit normals (the spectral baseline's; the
# screen and the noise measurement in robust.py use it too).
_MEDIAN4_VAR = 0.2975
# The neighbour ceiling: a neighbour's peak is taken within this many planes, and the
# ceiling is the peak of the 4th brightest neighbour (a residual hits at most 3 of them).
_CEILING_PLANES = 2
_CEILING_RANK = 4
# A flag whose |rho| exceeds this many times sigma is a residual's core: on a bright
# spectrum its neighbouring planes are checked as the residual's tails, and in later
# passes it marks the first predictions next to it as spoiled.
_TAIL_CORE = 2.0
# Rounds of the tail check (the second sees the tails the first flagged in the
# neighbours, no longer in their bases).
_TAIL_ROUNDS = 2
# A tail on a faint spectrum (the voxel and its prediction below bright_snr ERR)
# is flagged beyond this fraction of sigma: it sits next to a residual's strong
# core in its own spaxel, with the core's sign, where a residual's other planes
# are far likelier than elsewhere. (In the benchmarks, 0.9 on every spectrum
# flagged only injected voxels, at 4.5-5.0 sigma; 0.8 and 0.7 also real signal and
# noise whose tail fits, extrapolating past a guarded core, undershot by 4-9 ERR.)
# On a line the bound stays sigma: in the demo cube such a fit predicted a line's
# peak (S/N 51) 41 ERR low, at 4.5-5 sigma.
_TAIL_FRACTION = 0.9
# A refit this many times vaguer (in variance) than the fit it replaces cannot clear
# an echo flag (on the unseen seed-5 compact core, a 34-sigma hit's refit was
# uncertain by 159 ERR).
_ECHO_VAGUER = 10.0


def _predict(y, e, usable, neighbours, ks, ss, *, opts, unusable_before, exclude=(),
             flagged=None, repaired_value=None, own_repaired=False, drop_adjacent=False,
             screen, bright, return_aside=False):
    """Neighbour-basis predictions for the voxels ``(ks, ss)`` of a compact block.

    Parameters
    ----------
    y, e, usable : ndarray, shape (n_planes, m)
        Flux, ERR and where voxels are usable.
    neighbours : ndarray of int, shape (8, m)
    ks, ss : ndarray of int
        Planes and spaxels to predict.
    opts : dict
        ``half_window``, ``model_error``, ``candidate_sigma`` and ``bright_snr``.
    unusable_before : ndarray of int
        From :func:`layerclip.robust_fits.count_unusable`.
    exclude : sequence of ndarray of bool
        Voxels (one or two masks) a spaxel's own fit may not use; none only with
        ``own_repaired``.
    flagged : tuple, optional
        ``(flags, fk, fs)``: the flag mask and its planes and spaxels. Flagged
        voxels take ``repaired_value`` in a neighbour's spectrum (where finite;
        where not, that neighbour is unusable on the plane); neighbours flagged on
        the voxel's own plane are left out of the basis when they are a minority.
    own_repaired : bool
        Read the spaxel's own spectrum repaired too, ignoring ``exclude``.
    drop_adjacent : bool
        Neighbours flagged on a plane next to the voxel's are left out of the basis
        as if flagged on it (when a minority).
    screen, bright : ndarray
        The screen's normalised residual and where spectra are bright. Neighbours
        that stand out on the voxel's plane (beyond ``candidate_sigma`` on a faint
        spectrum; on a bright one, also beyond four times the neighbours' typical
        value) are left out of the basis when they are fewer than half.
    return_aside : bool
        Also return, per voxel, the neighbours (bit ``q`` for row ``q`` of
        ``neighbours``) left out because their single fits sided with it.

    Returns
    -------
    value, variance : ndarray
        Prediction and its variance (NaN where too few points could be fitted),
        from :func:`layerclip.robust_fits.predict_voxels`.
    aside : ndarray of uint8
        Only with ``return_aside``.
    """
    value = np.empty(ks.size)
    variance = np.empty(ks.size)
    aside = np.zeros(ks.size, np.uint8)
    if ks.size == 0:
        return (value, variance, aside) if return_aside else (value, variance)
    if not exclude and not own_repaired:
        raise ValueError("_predict: exclude masks are needed unless own_repaired")
    # (the kernel takes two masks: a single one is given twice; with own_repaired
    # none is read, nor is ``repaired`` when nothing is flagged)
    masks = (list(exclude) * 2)[:2] if exclude else [usable, usable]
    if flagged is None:
        repaired, repaired_value, any_repaired, any_broken = masks[0], y, False, False
    else:
        repaired, fk, fs = flagged
        any_repaired = fk.size > 0
        any_broken = not np.isfinite(repaired_value[fk, fs]).all()
    predict_voxels(y, e, usable, unusable_before, masks[0], masks[1], repaired,
                   repaired_value, any_repaired, any_broken, bool(own_repaired),
                   bool(drop_adjacent), neighbours,
                   np.ascontiguousarray(ks, np.int64), np.ascontiguousarray(ss, np.int64),
                   int(opts["half_window"]), float(opts["model_error"]), screen, bright, True,
                   float(opts["candidate_sigma"]), float(opts["bright_snr"]), value, variance,
                   aside)
    return (value, variance, aside) if return_aside else (value, variance)


@dataclass(eq=False)
class _FirstPass:
    """The first pass's verdicts on the candidates at planes ``k`` and spaxels ``s``
    (``linear``: their flat indices, in increasing order), for the later passes:
    ``rho``, the prediction, its variance, the neighbours left aside, and
    ``signal``, where the voxel holds real signal."""

    k: np.ndarray
    s: np.ndarray
    linear: np.ndarray
    rho: np.ndarray
    value: np.ndarray
    variance: np.ndarray
    aside: np.ndarray
    signal: np.ndarray


def _fit(b, ks, ss, flagged, first_pass=False):
    """Predict the voxels ``(ks, ss)`` of block ``b`` and judge them, updating
    ``b.value``, ``b.variance``, ``b.aside`` and ``b.rho`` (where the fit is finite;
    in the first pass also on a bright spectrum, to 0) in place.

    ``flagged`` is None (only the outlying voxels left out of the windows) or
    ``(flags, fk, fs)``: flagged voxels are left out of their own windows and
    repaired (by ``b.value``) in their neighbours' spectra. ``first_pass``: the
    refit next to the voxels over the ceiling, still within the first pass.
    """
    y, e, usable, neighbours, common = b.y, b.e, b.usable, b.neighbours, b.common
    value, aside = b.value, b.aside
    if flagged is None:
        v, var, aside[ks, ss] = _predict(y, e, usable, neighbours, ks, ss,
                                         exclude=(b.outlying,), return_aside=True, **common)
    else:
        # (in the first pass the flags, voxels above the ceiling, have no value
        # yet: neighbours holding one in the window are left out of the basis)
        v, var, aside[ks, ss] = _predict(y, e, usable, neighbours, ks, ss,
                                         exclude=(b.outlying, flagged[0]), flagged=flagged,
                                         repaired_value=value, return_aside=True,
                                         **common)
        again = ~np.isfinite(v)
        if again.any() and not first_pass:
            # where flags leave too few planes, the flagged voxels' repaired
            # values stand in for them
            v[again], var[again], aside[ks[again], ss[again]] = _predict(
                y, e, usable, neighbours, ks[again], ss[again], flagged=flagged,
                repaired_value=value, own_repaired=True, return_aside=True, **common)
    value[ks, ss] = v
    b.variance[ks, ss] = var
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (y[ks, ss] - v) / np.sqrt(e[ks, ss] ** 2 + var) / b.scale[ks]
    fitted = np.isfinite(z)
    b.rho[ks[fitted], ss[fitted]] = z[fitted]
    # too few usable planes around a bright voxel to judge it: left alone (on
    # faint ones the screen's verdict stands; in later passes, the last one's)
    if flagged is None or first_pass:
        undecided = ~fitted & b.bright[ks, ss]
        b.rho[ks[undecided], ss[undecided]] = 0.0


def _ceiling_flags(b, cand_k, cand_s, ceiling_ratio):
    """The neighbour ceiling (see the module notes) on the candidates ``(cand_k,
    cand_s)`` of block ``b``, after their first fits.

    Returns the planes and spaxels of the voxels over the ceiling by more than
    ``sigma``, and by how much (in ERR); the voxels near them that hold real signal
    are fitted again (:func:`_fit`) with them left out.
    """
    y, e, usable, neighbours = b.y, b.e, b.usable, b.neighbours
    sigma = b.sigma
    # The neighbour ceiling: a spaxel cannot be far brighter than its fourth brightest
    # neighbour, whatever the PSF; a voxel above ceiling_ratio times that neighbour's
    # peak (or its own ERR) by more than sigma is flagged whatever the fits say, and
    # the voxels near it are fitted again with it left out of their windows and of
    # their neighbours' (it would teach the fits its own shape)
    with np.errstate(invalid="ignore"):
        high = y[cand_k, cand_s] > (ceiling_ratio + sigma) * e[cand_k, cand_s]
    over_k, over_s = cand_k[high], cand_s[high]
    ceiling = np.empty(over_k.size)
    neighbour_ceiling(y, usable, neighbours, over_k, over_s, _CEILING_PLANES, _CEILING_RANK,
                      ceiling)
    with np.errstate(invalid="ignore"):
        over = (y[over_k, over_s] - ceiling_ratio * np.maximum(ceiling, e[over_k, over_s])) \
            / e[over_k, over_s]
    above = over > sigma
    passed = ~above & np.isfinite(ceiling)
    passed_k, passed_s = over_k[passed], over_s[passed]
    over_k, over_s, over = over_k[above], over_s[above], over[above]
    if over.size:
        # ... unless a neighbour on the same plane is as bright and above doubt (a
        # spaxel next to the peak of a point source sharper than the fourth neighbour
        # allows): a voxel the screen settled, or one checked and under its ceiling;
        # spaxels it vouches for vouch in turn
        good = usable & ~b.candidate
        good[passed_k, passed_s] = True
        limit = y[over_k, over_s] - sigma * e[over_k, over_s]
        held = np.zeros(over.size, bool)
        for _ in range(_CEILING_RANK):
            supported(y, usable, neighbours, over_k, over_s, limit, good, held)
            if not held.any():
                break
            good[over_k[held], over_s[held]] = True
            keep = ~held
            over_k, over_s, over, limit, held = (over_k[keep], over_s[keep], over[keep],
                                                 limit[keep], held[keep])
    if over.size:
        over_mask = np.zeros(y.shape, bool)
        over_mask[over_k, over_s] = True
        b.value[over_k, over_s] = np.nan
        ks, ss = near_flags(over_k, over_s, neighbours, int(b.half_window), b.candidate,
                            over_mask, np.zeros(y.shape, bool))
        # (only where the first verdict is kept for later passes: real signal; on
        # faint spectra it only seeds flags, and the later passes refit those)
        with np.errstate(invalid="ignore"):
            signal = b.bright[ks, ss] | (b.value[ks, ss] > b.bright_snr * e[ks, ss])
        _fit(b, ks[signal], ss[signal], (over_mask, over_k, over_s), first_pass=True)
    return over_k, over_s, over


def _keep_over_ceiling(rho, over_k, over_s, over):
    """Raise, in place, ``rho`` of the voxels over the ceiling to their excess ``over``
    (from :func:`_ceiling_flags`) where it is below."""
    rho[over_k, over_s] = np.maximum(rho[over_k, over_s], over)


def _first_pass(b, cand_k, cand_s):
    """The first pass's verdicts (a :class:`_FirstPass`) on the voxels of block ``b``
    that can pass ``sigma``: the candidates ``(cand_k, cand_s)``, and (with a
    ``sigma`` below ``candidate_sigma``) any voxel beyond it."""
    # Where a voxel can pass sigma: the candidates, and (with a sigma below
    # candidate_sigma) any voxel; later, also voxels flagged by growing.
    if b.sigma < b.candidate_sigma:
        cand_k, cand_s = _true_positions(b.usable & (np.abs(b.rho) > b.sigma) | b.candidate)
    # the first pass's verdicts on the bright candidates, for the later passes
    cand_linear = cand_k * b.y.shape[1] + cand_s
    first = b.rho[cand_k, cand_s]
    first_value, first_variance = b.value[cand_k, cand_s], b.variance[cand_k, cand_s]
    first_aside = b.aside[cand_k, cand_s]
    # real signal on the voxel: a bright spectrum, or a first prediction as bright (a
    # narrow line's peak rises from a faint baseline)
    with np.errstate(invalid="ignore"):
        first_signal = (b.bright[cand_k, cand_s]
                        | (first_value > b.bright_snr * b.e[cand_k, cand_s]))
    return _FirstPass(k=cand_k, s=cand_s, linear=cand_linear, rho=first, value=first_value,
                      variance=first_variance, aside=first_aside, signal=first_signal)


def _refit_passes(b, first, flags, fk, fs, over_ceiling, passes):
    """The ``passes - 1`` refits of the candidates of block ``b`` near flags (see the
    module notes), each followed by growing.

    ``first`` is the first pass (:func:`_first_pass`), ``flags, fk, fs`` its grown
    flags and their planes and spaxels, ``over_ceiling`` the voxels over the
    ceiling (:func:`_ceiling_flags`). Returns the last flags, planes and spaxels.
    """
    m = b.y.shape[1]
    refitted = np.zeros(first.k.size, bool)
    last = None
    for _ in range(int(passes) - 1):
        if fk.size == 0:
            break
        # refit every candidate whose window or neighbours hold a flag, with the
        # flags left out of its own window and repaired in its neighbours' spectra;
        # after the first refit, only where a flag near it changed (elsewhere the
        # refit would see the same flags)
        if last is None:
            ck, cs = fk, fs
        else:
            ck, cs = _true_positions(flags ^ last)
        last = flags
        ks, ss = near_flags(ck, cs, b.neighbours, int(b.half_window), b.candidate, flags,
                            np.zeros(b.y.shape, bool))
        _fit(b, ks, ss, (flags, fk, fs))
        # the candidates with real signal refitted in this pass or an earlier one
        pos = np.minimum(np.searchsorted(first.linear, ks * m + ss), first.linear.size - 1)
        pos = pos[first.linear[pos] == ks * m + ss]
        refitted[pos[first.signal[pos]]] = True
        _settle_refits(b, first, np.flatnonzero(refitted), flags)
        _keep_over_ceiling(b.rho, *over_ceiling)
        extra = ~b.candidate[fk, fs]
        sk, sk_s = np.concatenate([first.k, fk[extra]]), np.concatenate([first.s, fs[extra]])
        seed = np.abs(b.rho[sk, sk_s]) > b.sigma
        flags, fk, fs = _grow(sk[seed], sk_s[seed], b.rho, b.usable, b.neighbours,
                              b.grow_sigma, b.grow)
    return flags, fk, fs


def _settle_refits(b, first, at, flags):
    """Weigh, in place, the refits of the first pass's candidates ``at`` (positions in
    ``first``, a :class:`_FirstPass`) against their first verdicts: the rules
    "vaguer", "spoiled" and "confirmed" of the module notes decide ``b.rho`` and,
    where the first verdict stands, restore its prediction."""
    n_planes = b.y.shape[0]
    sigma, rho, neighbours = b.sigma, b.rho, b.neighbours
    # On bright spectra a later fit, with fewer planes, may misjudge real
    # structure: a voxel there stays flagged only if the first pass agrees
    # (its rho becomes the weaker of the two, 0 if they disagree in sign); and
    # where the later fit is much less precise than the first (flags took the
    # planes that pinned it down), the first one's verdict stands.
    bk, bs = first.k[at], first.s[at]
    with np.errstate(invalid="ignore"):
        vaguer = b.variance[bk, bs] > 4.0 * first.variance[at]
    refit = rho[bk, bs]
    # ... unless the first fit's basis held a neighbour now flagged with a
    # residual of the same sign, on the same plane, or strongly (beyond
    # _TAIL_CORE sigma) on a plane next to it where this spaxel is strongly
    # flagged too (the voxel is then that residual's tail): one residual
    # spanning both spaxels spoiled that prediction
    nbs = neighbours[:, bs]
    shared = _flagged_alike(flags, rho, nbs, bk, refit)
    strong = _TAIL_CORE * sigma
    for step in (-1, 1):
        kk = np.clip(bk + step, 0, n_planes - 1)
        own_strong = flags[kk, bs] & (np.abs(rho[kk, bs]) > strong)
        shared |= _flagged_alike(flags, rho, nbs, kk, refit, strong) & own_strong
    spoiled = shared.any(axis=0) & ((np.sign(refit) != np.sign(first.rho[at]))
                                    | (np.abs(refit) > np.abs(first.rho[at])))
    # ... and where the first prediction left out neighbours that sided with
    # the voxel, unflagged since and not left out by the refit (so back in its
    # basis), and the refit finds less, the first verdict stands too
    vaguer |= (_leaned_on(first.aside[at] & ~b.aside[bk, bs], flags, neighbours, bk, bs)
               & (np.abs(refit) < np.abs(first.rho[at])) & (np.abs(first.rho[at]) > strong))
    vaguer &= ~spoiled
    b.value[bk[vaguer], bs[vaguer]] = first.value[at[vaguer]]
    b.variance[bk[vaguer], bs[vaguer]] = first.variance[at[vaguer]]
    b.aside[bk[vaguer], bs[vaguer]] = first.aside[at[vaguer]]
    now, was = np.where(vaguer, first.rho[at], refit), first.rho[at]
    # ... nor where both find it the same way, the first beyond grow_sigma and
    # the later beyond _TAIL_CORE sigma (the first held the residual's tails)
    confirmed = ((np.sign(was) == np.sign(now)) & (np.abs(was) > b.grow_sigma)
                 & (np.abs(now) > _TAIL_CORE * sigma))
    rho[bk, bs] = np.where(spoiled | confirmed, now, np.where(
        np.sign(was) == np.sign(now), np.sign(now) * np.minimum(np.abs(was), np.abs(now)),
        0.0))


def _flag_tails(b, flags, fk, fs):
    """The tail check (see the module notes), in ``_TAIL_ROUNDS`` rounds: the tails
    found are added to ``flags`` in place, with their fits in block ``b``.

    ``fk, fs`` are the planes and spaxels of ``flags``; returns those of the flags
    after the check.
    """
    y, e, usable, neighbours = b.y, b.e, b.usable, b.neighbours
    sigma = b.sigma
    # The tails of a residual spanning 2-3 planes: next to a strong flag, the
    # voxel's own fit window holds the residual's other planes, and its
    # neighbours' spectra the residual's spread, so its fits can learn the
    # residual's shape and predict it. Fitted once more with the planes next to
    # every flag left out of its window, a tail of the same sign beyond sigma
    # (_TAIL_FRACTION sigma on a faint spectrum) is flagged too; so are the tails
    # of weaker flags where a neighbour holds the residual's strong part on the
    # tail's plane. A second round sees the tails the first flagged in neighbours.
    tk, ts, core_sign = _tails_to_check(fk, fs, flags, b.rho, usable, neighbours, sigma,
                                        _TAIL_CORE * sigma)
    for tail_round in range(_TAIL_ROUNDS):
        if tk.size == 0:
            break
        v, var, left_out = _predict_tails(b, tk, ts, flags, fk, fs)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (y[tk, ts] - v) / np.sqrt(e[tk, ts] ** 2 + var) / b.scale[tk]
            signal = (b.bright[tk, ts] | (y[tk, ts] > b.bright_snr * e[tk, ts])
                      | (v > b.bright_snr * e[tk, ts]))
            bound = np.where(signal, sigma, _TAIL_FRACTION * sigma)
            tail = np.isfinite(z) & (np.sign(z) == core_sign) & (np.abs(z) > bound)
        if not tail.any():
            break
        nk, ns = tk[tail], ts[tail]
        flags[nk, ns] = True
        b.value[nk, ns], b.variance[nk, ns], b.rho[nk, ns] = v[tail], var[tail], z[tail]
        b.aside[nk, ns] = left_out[tail]
        fk, fs = _true_positions(flags)
        if tail_round == _TAIL_ROUNDS - 1:
            break
        # the next round refits the unflagged tails the new flags reach (in their
        # spaxel or a neighbour, within the window and its guard), and the tails of
        # the new flags themselves; elsewhere it would see the same data
        pending = np.zeros(y.shape, bool)
        pending[tk, ts] = ~flags[tk, ts]
        reached = np.zeros(y.shape, bool)
        near_flags(nk, ns, neighbours, int(b.half_window) + 1, pending, pending,
                   reached)
        tk, ts, core_sign = _tails_to_check(fk, fs, flags, b.rho, usable, neighbours, sigma,
                                            _TAIL_CORE * sigma)
        left = reached[tk, ts] | ~pending[tk, ts]
        tk, ts, core_sign = tk[left], ts[left], core_sign[left]
    return fk, fs


def _predict_tails(b, tk, ts, flags, fk, fs):
    """Predictions for the tails ``(tk, ts)`` of block ``b`` with the planes next to
    every flag left out of their windows (see the module notes).

    Returns the values, their variances and the neighbours left out of each basis
    (as in :func:`_predict`'s ``aside``; 0 where the two-term fit was taken).
    """
    y, e, usable, neighbours, common = b.y, b.e, b.usable, b.neighbours, b.common
    outlying, value = b.outlying, b.value
    guard = _with_adjacent_planes(flags, fk, fs)
    v, var, left_out = _predict(y, e, usable, neighbours, tk, ts,
                                exclude=(outlying, guard), drop_adjacent=True,
                                flagged=(flags, fk, fs), repaired_value=value,
                                return_aside=True, **common)
    # (where the guard leaves too few planes, without it; where the voxels the
    # screen found outlying leave too few, without those: next to two residuals
    # in one spaxel a few planes apart, their pull on the screen's baseline
    # makes the clean planes between them look outlying)
    for skip in ((outlying, flags), (flags,)):
        again = np.flatnonzero(~np.isfinite(v))
        if again.size:
            v[again], var[again], left_out[again] = _predict(
                y, e, usable, neighbours, tk[again], ts[again], exclude=skip,
                flagged=(flags, fk, fs), repaired_value=value, return_aside=True,
                **common)
    faint = np.flatnonzero(~b.bright[tk, ts])
    if faint.size:
        v2 = np.empty(faint.size)
        var2 = np.empty(faint.size)
        sum_fit_voxels(y, e, usable, b.unusable_before, guard | outlying, flags, value,
                       neighbours, tk[faint], ts[faint], int(b.half_window), v2, var2)
        with np.errstate(invalid="ignore"):
            better = var2 < var[faint]
        v[faint[better]] = v2[better]
        var[faint[better]] = var2[better]
        left_out[faint[better]] = 0
    return v, var, left_out


def _replacement_values(b, flags, fk, fs):
    """Set, in ``b.value`` and ``b.variance``, the replacement values of the flags
    ``(fk, fs)`` (see the module notes)."""
    y, e, usable, neighbours, common = b.y, b.e, b.usable, b.neighbours, b.common
    value, variance = b.value, b.variance
    # Replacement values: a flagged voxel on a bright spectrum is predicted once
    # more without the planes next to flags (unflagged tails of the same residual
    # would pull the prediction; a run of three flags has none left), where that
    # leaves enough planes.
    # (not where the prediction left out neighbours that sided with the voxel: these
    # fits would hold them again)
    on_bright = b.bright[fk, fs]
    free = b.aside[fk, fs] == 0
    ks, ss = fk[on_bright & free], fs[on_bright & free]
    if ks.size:
        v, var = _predict(y, e, usable, neighbours, ks, ss,
                          exclude=(b.outlying, _guard_short_runs(flags, fk, fs)),
                          flagged=(flags, fk, fs), repaired_value=value, **common)
        # (not where the guard leaves the fit far vaguer: it would extrapolate)
        with np.errstate(invalid="ignore"):
            better = np.isfinite(v) & ~(var > 4.0 * variance[ks, ss])
        value[ks[better], ss[better]] = v[better]
        variance[ks[better], ss[better]] = var[better]
    # On a faint spectrum the five-term fit's slopes are diluted by its neighbours'
    # noise and undershoot a faint line: a flagged voxel there is given a two-term
    # fit on its neighbours' summed spectrum instead, where one can be made.
    ks, ss = fk[~on_bright & free], fs[~on_bright & free]
    if ks.size:
        v = np.empty(ks.size)
        var = np.empty(ks.size)
        sum_fit_voxels(y, e, usable, b.unusable_before, flags | b.outlying, flags, value,
                       neighbours, ks, ss, int(b.half_window), v, var)
        better = np.isfinite(v)
        value[ks[better], ss[better]] = v[better]
        variance[ks[better], ss[better]] = var[better]
    missing = ~np.isfinite(value[fk, fs])
    if missing.any():
        _fit(b, fk[missing], fs[missing], (flags, fk, fs))
        # a flag no fit could predict (a faint voxel with too few usable planes
        # around it) is given the spectral baseline
        mk, ms = fk[missing], fs[missing]
        still = ~np.isfinite(value[mk, ms])
        mk, ms = mk[still], ms[still]
        value[mk, ms] = [spectral_baseline(y, usable, k, s) for k, s in zip(mk, ms, strict=True)]
        variance[mk, ms] = (_MEDIAN4_VAR + 1.0) * e[mk, ms] ** 2
    # A flagged voxel whose value lies between those of the planes either side (no
    # spike, no dip: on a line's wing a misfit of its shape is flagged so) is not
    # given a value beyond them by more than 3 ERR: there the fit extrapolates
    _bound_replacements(y, e, usable, flags, fk, fs, value)


def _clear_echoes(fk, fs, flags, fitted, neighbours, sigma, fit):
    """Clear flags, beyond ``sigma`` on their own, that sit next to a flag of the
    opposite sign on the same plane and that a refit without the flags no longer
    finds (``fit`` updates the arrays ``fitted``, that is ``rho``, ``value``,
    ``variance`` and the neighbours left aside, in place), unless the refit is over
    ``_ECHO_VAGUER`` times vaguer than the fit it replaces. The flags kept keep
    their verdict, prediction, variance and neighbours left aside."""
    rho, variance = fitted[0], fitted[2]
    nbs = neighbours[:, fs]
    at = fk[None], np.maximum(nbs, 0)
    opposite = ((nbs >= 0) & flags[at] & (np.sign(rho[at]) != np.sign(rho[fk, fs]))
                ).any(axis=0) & (np.abs(rho[fk, fs]) > sigma)
    if not opposite.any():
        return
    ek, es = fk[opposite], fs[opposite]
    before = [a[ek, es].copy() for a in fitted]
    fit(ek, es, (flags, fk, fs))
    with np.errstate(invalid="ignore"):
        clear = ~(np.abs(rho[ek, es]) > sigma) & ~(variance[ek, es] > _ECHO_VAGUER * before[2])
    flags[ek[clear], es[clear]] = False
    kk, ks = ek[~clear], es[~clear]
    for a, old in zip(fitted, before, strict=True):
        a[kk, ks] = old[~clear]


def _true_positions(mask):
    """Planes and spaxels where the 2-D ``mask`` is True (``np.nonzero``'s order, faster)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _bound_replacements(y, e, usable, flags, fk, fs, value):
    """Clip, in place, the ``value`` of each flag ``(fk, fs)`` whose ``y`` lies between
    those of the planes either side (both usable and unflagged) to that range
    widened by 3 ``e``."""
    n_planes = y.shape[0]
    inside = (fk > 0) & (fk < n_planes - 1)
    k, s = fk[inside], fs[inside]
    ok = (usable[k - 1, s] & usable[k + 1, s] & ~flags[k - 1, s] & ~flags[k + 1, s])
    k, s = k[ok], s[ok]
    low = np.minimum(y[k - 1, s], y[k + 1, s])
    high = np.maximum(y[k - 1, s], y[k + 1, s])
    between = (y[k, s] >= low) & (y[k, s] <= high)
    k, s, low, high = k[between], s[between], low[between], high[between]
    value[k, s] = np.clip(value[k, s], low - 3.0 * e[k, s], high + 3.0 * e[k, s])


def _with_adjacent_planes(flags, fk, fs):
    """``flags`` (at planes and spaxels ``fk, fs``) grown by one plane either way (the
    guard around flagged voxels)."""
    guard = flags.copy()
    n_planes = flags.shape[0]
    up, down = fk < n_planes - 1, fk > 0
    guard[fk[up] + 1, fs[up]] = True
    guard[fk[down] - 1, fs[down]] = True
    return guard


def _guard_short_runs(flags, fk, fs):
    """``flags`` (at planes and spaxels ``fk, fs``) grown by one plane either way,
    except beyond a run of three or more flagged planes (a residual spans at most
    three: such a run has no tails left)."""
    guard = flags.copy()
    n_planes = flags.shape[0]
    for step in (1, -1):
        nxt = fk + step
        # the run ending at fk (seen from the side of nxt) spans three planes
        run = ((fk - 2 * step >= 0) & (fk - 2 * step < n_planes))
        run[run] = flags[fk[run] - step, fs[run]] & flags[fk[run] - 2 * step, fs[run]]
        grow = (nxt >= 0) & (nxt < n_planes) & ~run
        guard[nxt[grow], fs[grow]] = True
    return guard


def _tails_to_check(fk, fs, flags, rho, usable, neighbours, sigma, core):
    """Usable, unflagged voxels next (one plane) to a flag of their spaxel whose
    ``|rho|`` exceeds ``core``, or exceeds ``sigma`` where a neighbouring spaxel is
    flagged beyond ``core`` with the same sign on the voxel's plane; their planes,
    spaxels and that flag's sign.

    ``fk, fs`` are the planes and spaxels of the flags in ``flags``. A voxel next to
    two such flags is listed for each (their signs may differ).

    (The tail itself may sit on a spectrum the screen calls faint: the residual's
    other planes pull its baseline down or up. A residual spread over several
    spaxels is strong in some and weaker in others; its planes are the same in
    all, so where a neighbour holds its strong part on a plane next to a weaker
    flag, that plane is likely the residual's too.)"""
    n_planes = flags.shape[0]
    strength = np.abs(rho[fk, fs])
    strong = strength > core
    ck, cs = fk[strong], fs[strong]
    tk = np.concatenate([ck - 1, ck + 1])
    ts = np.concatenate([cs, cs])
    sign = np.sign(np.concatenate([rho[ck, cs], rho[ck, cs]]))
    inside = (tk >= 0) & (tk < n_planes)
    tk, ts, sign = tk[inside], ts[inside], sign[inside]
    keep = usable[tk, ts] & ~flags[tk, ts]
    tk, ts, sign = tk[keep], ts[keep], sign[keep]
    # the planes next to weaker flags where a neighbour is strongly flagged alike
    weak = ~strong & (strength > sigma)
    wk, ws = fk[weak], fs[weak]
    ek = np.concatenate([wk - 1, wk + 1])
    es = np.concatenate([ws, ws])
    esign = np.concatenate([rho[wk, ws], rho[wk, ws]])
    inside = (ek >= 0) & (ek < n_planes)
    ek, es, esign = ek[inside], es[inside], esign[inside]
    keep = usable[ek, es] & ~flags[ek, es]
    ek, es, esign = ek[keep], es[keep], esign[keep]
    keep = _flagged_alike(flags, rho, neighbours[:, es], ek, esign, core).any(axis=0)
    ek, es, esign = ek[keep], es[keep], np.sign(esign[keep])
    # (each such voxel once, and not where it is listed already: in a stable sort
    # of both lists, an entry equal to the one before it goes)
    m = flags.shape[1]
    linear = np.concatenate([tk * m + ts, ek * m + es])
    order = np.argsort(linear, kind="stable")
    repeated = np.zeros(linear.size, bool)
    repeated[order[1:]] = linear[order[1:]] == linear[order[:-1]]
    once = ~repeated[tk.size:]
    return (np.concatenate([tk, ek[once]]), np.concatenate([ts, es[once]]),
            np.concatenate([sign, esign[once]]))


def _leaned_on(aside, flags, neighbours, ks, ss):
    """Whether any neighbour of ``(ks, ss)`` whose bit is set in ``aside`` (bit ``q``
    for row ``q`` of ``neighbours``) is unflagged on plane ``ks``."""
    out = np.zeros(ks.size, bool)
    for q in range(neighbours.shape[0]):
        nb = neighbours[q, ss]
        out |= ((aside >> q) & 1).astype(bool) & (nb >= 0) & ~flags[ks, np.maximum(nb, 0)]
    return out


def _flagged_alike(flags, rho, nbs, ks, sign_of, beyond=0.0):
    """Which neighbours ``nbs`` (shape (8, n)) are flagged on planes ``ks`` with a
    ``rho`` of the same sign as ``sign_of`` (and ``|rho|`` above ``beyond``)."""
    at = ks[None], np.maximum(nbs, 0)
    return ((nbs >= 0) & flags[at] & (np.sign(rho[at]) == np.sign(sign_of))
            & (np.abs(rho[at]) > beyond))


def _grow(ks, ss, rho, usable, neighbours, grow_sigma, steps):
    """Flags at ``(ks, ss)`` grown to adjacent voxels (plane or spaxel) whose ``rho``
    has the same sign and exceeds ``grow_sigma``, ``steps`` times.

    Returns the flag mask and the planes and spaxels of its flags
    (:func:`layerclip.robust_screen.grow_flags`).
    """
    flags = np.zeros(rho.shape, bool)
    fk, fs = grow_flags(np.ascontiguousarray(ks, np.int64), np.ascontiguousarray(ss, np.int64),
                        rho, usable, neighbours, float(grow_sigma), int(steps), flags)
    return flags, fk, fs
