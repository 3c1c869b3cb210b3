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
``bright_snr`` x ERR (on a bright line the baseline cannot follow the spectrum's
shape, so the screen alone decides nothing there), unless that bright spectrum is
smooth: ``|r|`` within ``candidate_sigma`` on every plane from ``k-3`` to ``k+3``
(a bright continuum the baseline follows, where the screen is as sharp as on a
faint one).

**ERR that understates the noise.** Every fit weighs its misfits against ERR, so
an ERR array that understates the noise everywhere makes each window's misfits look
like model error, which widens every prediction's uncertainty on top of the
per-plane scale: residuals are then missed (with ERR at 0.7 times the noise, 16
strong residuals in the 15 "ERR x0.7" cubes of ``benchmarks/quality_unseen.py``
against 7 with the right ERR). So the ratio of the noise to ERR is measured once per
cube (:func:`measure_err_factor`: the screen's scale at planes spread over the
cube, their median) and, where it exceeds 1.05, ERR is multiplied by it before
anything else (``err_factor``, recorded with the parameters); on the benchmark
cubes with a right ERR it measures 0.969-1.023 and changes nothing.

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
a velocity gradient. A neighbour without data on one plane of the window (a NaN
hole, not on ``k``) stays in; the fit drops that plane (the tail check's fits,
below, leave such a neighbour out instead: they already do without a residual's
planes). The fit evaluated at ``k`` is the prediction. Its variance is
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
  neighbours' typical value), when they are fewer than half, are left out of the
  basis (a line would show in most of them, or in half where a velocity gradient
  moves a narrow line's peak onto plane ``k``; a residual hits a few);
* where the neighbours hold no signal on plane ``k`` (median below 3 ERR) nor a
  slope across it (median of half the difference of planes ``k+1`` and ``k-1``
  below 3 ERR), the median over neighbours of single-neighbour fits
  ``b + a n + c n'`` (without the planes next to ``k``, leaving out neighbours that
  extrapolate) replaces the joint fit when the two disagree beyond their
  uncertainties or the median is the more precise: a joint fit on noise follows
  any residual its neighbours share. (On a line's edge the single fits follow the
  slope through ``n'``, and a residual in the spaxel's own window leads them all
  astray alike, so their spread does not show it; there the joint fit, with its
  robust step, stands);
* where a first prediction is vague (variance above 4 ERR^2), its neighbours' own
  single-neighbour fits are compared: a residual spread over the voxel and two or
  three neighbours puts itself into the basis (and, through its other plane, into
  the window's misfits, hence the vagueness), and the hit neighbours' fits stand
  apart from the median towards the voxel's value (measured from the median of
  the others once those are set aside, in up to two more rounds: two strongly
  hit neighbours pull the median of all towards the voxel, and a third, less hit
  one stays within reach of it; a neighbour whose single fit extrapolates, its
  value on plane ``k`` far outside its range over the window, may side too: a
  residual of its own, unless another neighbour peaks on plane ``k`` beyond
  ``candidate_sigma`` and this one peaks there over twice as high as the voxel,
  as the neighbours towards a point source's peak do on its wing when the line
  is narrower than the planes beside ``k``). Where the voxel is beyond 3 sigma of
  that median and such neighbours are a minority, the fits are made again without
  them (the one without the planes next to ``k`` where it predicts one of those
  planes or agrees with the median of the other neighbours' single fits: a basis
  that cannot follow a sharp core misses both planes, and so do a residual's tails
  when it spans three, but only then do the others confirm it), and the result is
  taken where it agrees with that median and is the more precise, or where the
  first prediction does not agree with it (the siding neighbours had spoiled it).
  The step belongs to the first predictions; a refit on a faint spectrum takes it
  too, but with only the extrapolating neighbours as candidates for siding (a
  residual over several spaxels of one plane leaves the others hit, out of their
  range, in the basis).

The normalised residual is ``z = (x - p) / sqrt(ERR^2 + var(p)) / scale``, and a
voxel is flagged when ``|z| > sigma``; where no fit was made the screen's ``r``
serves as ``z`` (on bright spectra, a voxel that cannot be fitted is left alone).

**Neighbour ceiling.** Whatever the PSF, a spaxel of real emission is not far
brighter than its fourth brightest neighbour: an unresolved source whose PSF has a
FWHM of one spaxel (sharper than a NIRSpec cube's) puts about 1/7 of its peak into
each edge neighbour, and velocity shifts are covered by taking each neighbour's
peak within two planes. A residual spread over 1-4 spaxels can hit at most three of
a spaxel's neighbours, so the fourth brightest is clean. A candidate voxel above
``ceiling_ratio`` (20) times that neighbour's peak (or its own ERR) by more than
``sigma`` is flagged whatever the fits say, unless a neighbour on the same plane is
at least as bright and above doubt (a voxel the screen settled, or one under its own
ceiling): a corner spaxel next to a very sharp peak is vouched for by the peak. The
voxels near such flags are fitted again at once with them left out of their own
windows and out of the neighbour bases whose window holds them (those on a bright
spectrum or with a bright first prediction; elsewhere the first verdict only seeds
flags, which the later passes refit): otherwise a residual over two spaxels teaches
each spaxel's fit its own spatial ratio and is predicted, whatever its amplitude.

**Passes and growing.** Flags grow to adjacent planes and spaxels whose ``z``
has the same sign and exceeds ``grow_sigma`` (residuals often span 2-3 planes and
several spaxels). Then, ``passes - 1`` times, every candidate near a flag is fitted
again with the flagged voxels left out of its own
window and repaired (by their prediction) in its neighbours' spectra, so one
residual cannot hide or fake another; growing is repeated. A neighbour flagged on
the voxel's own plane is left out of the basis instead (when such neighbours are a
minority), and the fit without the planes next to ``k`` may then be chosen on a
bright spectrum too: a repaired value is itself a prediction, which a residual over
several spaxels pulls, and the neighbour's unflagged planes carry its tails.
After the first refit, a later one refits only the voxels near a flag that changed.
On bright spectra a voxel stays flagged only if the first pass agrees (a later fit,
with fewer planes, may misjudge real structure), unless a neighbour in the first
fit's basis is now flagged with the same sign, on the same plane, or beyond
``2 sigma`` on a plane next to it where this spaxel is flagged beyond ``2 sigma``
too (the voxel is then the residual's tail), and the refit finds more than the
first fit did: one residual spanning both spaxels spoiled that first prediction
(the refit's verdict is then taken even where it is the vaguer one); nor where the
first pass found the voxel beyond ``grow_sigma`` and the refit beyond ``2 sigma``,
both the same way (the first fit held the residual's tails in its window and saw
it weaker: they agree on a hit). Conversely, where the first prediction left out
neighbours whose single fits sided with the voxel (the vague-prediction step, which
in a refit only faint spectra take, and then only for extrapolating neighbours)
and a refit, holding those again while they are unflagged, finds less than a
first verdict beyond ``2 sigma``, the first verdict stands, and its prediction is
kept as the replacement value. "Bright" here
also covers a voxel whose first prediction exceeds ``bright_snr`` x ERR: the peak of
a narrow line rises from a faint baseline.

**Tails.** A residual spanning 2-3 planes leaves its tails next to the flagged core:
the spaxel's fit for a tail holds the residual's other planes in its window (and its
neighbours' spectra the residual's spread), learns its shape and predicts it. So
the planes next to a flag beyond ``2 sigma`` (or beyond ``sigma``, where a
neighbouring spaxel is flagged beyond ``2 sigma`` with the same sign on that
plane: a residual over several spaxels spans the same planes in each, strong in
some and weaker in others) are fitted once more with the planes
next to every flag left out of the window (where that leaves too few planes, only
the flags; where the voxels the screen found outlying leave too few even so, not
those either) and the neighbours flagged next to the tail's plane left out of the
basis (a residual over several spaxels leaves its tails in them too); on a faint
spectrum the two-term fit on the summed neighbours (below) is taken where it is
the more precise (a five-term fit on a faint continuum, with a flagged neighbour
left out, can extrapolate by several ERR). A tail beyond ``sigma`` with the
core's sign is flagged; on a faint spectrum, where neither the voxel nor its
prediction reaches ``bright_snr`` ERR, beyond 0.9 ``sigma`` (a voxel next to a
residual's strong core in its own spaxel is far likelier to hold the residual
than one elsewhere; on a line, the fit past the guarded core can undershoot the
line's peak). A second round refits the tails left unflagged that the first round's
new flags reach (their fits may have had those neighbours' tails in their basis),
and the tails of those new flags.
(The tail's own spectrum may look faint to the screen: the residual's other planes
pull its baseline.)

**Echo flags.** A residual in a neighbour that a fit held in its basis pulls the
prediction its way, and the voxel then stands out the other way. A flag beyond
``sigma`` next to a flag of the opposite sign on the same plane is refitted with
the flags left out of its window and basis, and cleared where the refit no longer
finds it, unless the refit is over ``_ECHO_VAGUER`` times vaguer (it could not
confirm a hit either).

**Replacement values.** A flagged voxel takes its prediction. On a bright spectrum
it is predicted once more without the planes next to flags (unflagged tails of the
same residual would pull it; not beyond a run of three flagged planes, which has
no tails left), unless that leaves the fit more than four times vaguer (it would
extrapolate). On a faint spectrum the five-term fit regresses on
five noisy spectra, and its slopes, hence a faint line's predicted peak, are
diluted towards zero (on the faint synthetic target the replaced voxels came out
1-1.5 ERR low on average); there a two-term fit ``b + a S`` on the summed
neighbour spectrum ``S``, which has the least noise for its signal, gives the value,
the dilution that ``S``'s known noise still causes filled in by the prior that
the spaxel follows the mean of its neighbours, weighted by how little of ``S``'s
spread is signal (:func:`layerclip.robust_fits.sum_fit_voxels`). Last, a
flagged voxel whose value lies between those of the (unflagged) planes either
side is neither a spike nor a dip; its value is kept within that range widened by 3 ERR, which a fit
extrapolating a narrow line's shape can leave by a hundred ERR.

The layer map still decides what is clipped (``-1`` spaxels are never touched nor
used as neighbours), but no group statistic is used: a layer of any size can be
clipped, and a spaxel placed in the "wrong" layer does no harm.

Every statistic for a plane uses only planes within :func:`robust_halo`, and no
sum depends on where a block starts, so clipping blocks padded by the halo gives
the whole-cube result bit for bit.

The per-voxel work is compiled with numba: the fits in :mod:`layerclip.robust_fits`,
the screen, growing and finding the voxels near flags in
:mod:`layerclip.robust_screen`; this module keeps the decisions between the
stages. ``tests/robust_reference.py`` holds the vectorised NumPy version of the
fits that the kernels are checked against.
"""

from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import ndimage

from .robust_fits import count_unusable, predict_voxels, sum_fit_voxels
from .robust_screen import (
    gather_columns,
    grow_flags,
    near_flags,
    neighbour_ceiling,
    noise_residual_median,
    plane_mad,
    screen_residual,
    screen_voxels,
    spectral_baseline,
    supported,
    usable_voxels,
)

__all__ = ["RobustPrediction", "clip_block_robust", "robust_halo", "neighbour_table",
           "masked_median", "measure_err_factor", "noise_columns", "noise_planes",
           "noise_ratio", "DEFAULTS"]

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
    "ceiling_ratio": 20.0,
}

# (dy, dx) of the eight neighbours, in the order of neighbour_table's rows.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# Planes of the spectral baseline, and the variance of a median of four unit normals.
_BASELINE_OFFSETS = (-3, -2, 2, 3)
_MEDIAN4_VAR = 0.2975
# The neighbour ceiling: a neighbour's peak is taken within this many planes, and the
# ceiling is the peak of the 4th brightest neighbour (a residual hits at most 3 of them).
_CEILING_PLANES = 2
_CEILING_RANK = 4
# Sky spaxels a plane's scale is measured on: every n-th, n = count // 256 (so at most
# 511 of them, fixed by position).
_SCALE_SPAXELS = 256
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
# How far ERR understates the noise is measured once per cube, at planes spread
# evenly over it (each with the screen's baseline planes): the same planes however
# the cube is read, so blocks and the whole cube agree. At least this many planes,
# and enough for this many residuals in all (a field mostly covered by the target
# leaves few sky spaxels per plane).
_NOISE_PLANES = 32
_NOISE_RESIDUALS = 16384
# An ERR that understates the noise by more than this fraction is scaled up before
# clipping. (benchmarks/bench_err_factor.py: on the 90 benchmark cubes with a right
# ERR the measured ratio is 0.969-1.023; on the 15 with ERR 0.7 times the noise,
# 1.379-1.464, for a true 1.429.)
_ERR_TOLERANCE = 0.05
# A refit this many times vaguer (in variance) than the fit it replaces cannot clear
# an echo flag (on the unseen seed-5 compact core, a 34-sigma hit's refit was
# uncertain by 159 ERR).
_ECHO_VAGUER = 10.0


def robust_halo(*, half_window=DEFAULTS["half_window"], scale_window=DEFAULTS["scale_window"],
                grow=DEFAULTS["grow"], passes=DEFAULTS["passes"], interp_gap=0, **_ignored):
    """Planes on each side that the robust result for one plane depends on.

    The first pass reads the fit window (``half_window``) and the neighbour ceiling
    of the voxels in it (two planes more), or the baseline and its smoothed plane
    scale (``3 + scale_window``), whichever is wider, and its flags
    grow ``grow`` planes; every later pass reads the flags and predictions of the
    one before through its fit window and grows again; the planes next to strong
    flags are checked as tails, in ``_TAIL_ROUNDS`` rounds (each reads the fit window
    and a one-plane guard around flags), and flagged voxels are fitted once more for
    their replacement value (the same again); interpolated replacement reads
    ``interp_gap`` planes more.
    """
    h, g = int(half_window), int(grow)
    first = max(h + _CEILING_PLANES, max(_BASELINE_OFFSETS) + int(scale_window)) + g
    return (first + (int(passes) - 1) * (h + g) + (_TAIL_ROUNDS + 1) * (h + 1)
            + int(interp_gap))


def noise_planes(n_planes, n_columns):
    """The planes ``k`` at which :func:`measure_err_factor` measures the noise for
    ``n_columns`` spaxels: spread evenly over the cube, at least three planes from
    either end (none when it has fewer than seven planes); ``_NOISE_PLANES`` of
    them, or more where the spaxels are too few for ``_NOISE_RESIDUALS``
    residuals, up to every plane that has its baseline."""
    if n_planes < 7:
        return np.empty(0, np.int64)
    wanted = max(_NOISE_PLANES, -(-_NOISE_RESIDUALS // max(int(n_columns), 1)))
    centres = np.linspace(3, n_planes - 4, min(wanted, n_planes - 6))
    return np.unique(np.round(centres).astype(np.int64))


def noise_columns(layer_map):
    """Flat spaxel indices (of ``layer_map.ravel()``) on which
    :func:`measure_err_factor` measures the noise: every n-th sky spaxel, at most
    511 of them (as the screen's per-plane scale), or every spaxel not excluded
    where fewer than 16 are sky."""
    labels = np.asarray(layer_map).ravel()
    cols = np.flatnonzero(labels == 0)
    if cols.size < 16:
        return np.flatnonzero(labels >= 0)
    return cols[:: max(1, cols.size // _SCALE_SPAXELS)]


def noise_ratio(y, e, usable, planes, cols):
    """The ratio of the noise to ERR: the median over the planes ``planes`` of the
    screen's scale, before its floor of 1.

    Parameters
    ----------
    y, e : ndarray, shape (n_planes, m)
        Flux and ERR (float64).
    usable : ndarray of bool, shape (n_planes, m)
    planes : ndarray of int
        The planes ``k`` measured (normally :func:`noise_planes`), each at least
        three planes from either end of ``y``.
    cols : ndarray of int
        The spaxels (columns of ``y``) measured (normally :func:`noise_columns`).

    Returns
    -------
    float
        The median over the planes of the median of ``|x - baseline| / ERR`` over
        the spaxels whose five planes are usable (at least eight; the baseline is
        the median of planes ``k-3, k-2, k+2, k+3``), as a standard deviation. NaN
        where no plane can be measured.
    """
    medians = np.empty(len(planes))
    noise_residual_median(y, e, usable, np.asarray(planes, np.int64),
                          np.asarray(cols, np.int64), 8, medians)
    medians = medians[np.isfinite(medians)]
    if medians.size == 0:
        return np.nan
    return float(np.median(medians)) / 0.6745 / np.sqrt(1 + _MEDIAN4_VAR)


def measure_err_factor(y, e, usable, planes, cols):
    """How many times the noise exceeds what ERR says, where that is over
    ``1 + _ERR_TOLERANCE``; else 1.

    Robust mode weighs every misfit against ERR: an ERR array that understates the
    noise makes every fit's misfits look like model error, which then widens every
    prediction's uncertainty on top of the per-plane scale, and residuals are
    missed. (Paper mode, which uses the spread of the values, is not affected.)
    An ERR that overstates the noise is left as it is (fewer flags, not more).

    Parameters are those of :func:`noise_ratio`, which measures the ratio.
    """
    ratio = noise_ratio(y, e, usable, planes, cols)
    return ratio if ratio > 1 + _ERR_TOLERANCE else 1.0


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


def compact_planes(planes, index):
    """The spaxels ``index`` of ``planes`` (shape (n_planes, ny * nx)) as float64,
    shape (n_planes, len(index)): the compact layout robust mode works in."""
    planes = np.asarray(planes)
    if planes.dtype not in (np.float32, np.float64):
        # (the kernel is compiled for the FITS float types; others, e.g. float16)
        return np.take(planes, index, axis=1).astype(float)
    out = np.empty((planes.shape[0], index.size))
    gather_columns(planes, np.ascontiguousarray(index, np.int64), out)
    return out


def usable_mask(y, e):
    """Where the voxels of a compact block (from :func:`compact_planes`) are usable
    as far as their values go: finite SCI and finite, positive ERR."""
    out = np.empty(y.shape, bool)
    usable_voxels(y, e, out)
    return out


class RobustPrediction:
    """Prediction, its variance and the normalised residual (compact layout).

    ``value`` and ``variance`` (float32, the data's precision: they are held for
    every voxel of a block) are NaN where no prediction was fitted (voxels the
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


def _screen(y, e, usable, sky, neighbours, *, scale_window, bright_snr, sigma,
            candidate_sigma):
    """The screen over every voxel of a block (see the module notes).

    Returns the normalised residual (twice: ``screen`` to keep and
    ``rho`` to be overwritten by fits), the per-plane scale,
    where spectra are bright, the voxels left out of every fit window
    (``outlying``) and the candidates for a fit.
    """
    n_planes, m = y.shape
    rho = np.empty(y.shape)
    bright = np.empty(y.shape, bool)
    screen_residual(y, e, usable, float(bright_snr), rho, bright)
    # each plane's robust scale: MAD over (a fixed subset of) the sky spaxels
    cols = np.flatnonzero(sky) if sky.sum() >= 16 else np.arange(m)
    cols = cols[:: max(1, cols.size // _SCALE_SPAXELS)]
    mad = np.empty(n_planes)
    plane_mad(rho, cols.astype(np.int64), 8, mad)
    scale = np.where(np.isfinite(mad), mad / 0.6745 / np.sqrt(1 + _MEDIAN4_VAR), 1.0)
    if scale_window > 0:
        scale = ndimage.median_filter(scale, size=2 * int(scale_window) + 1, mode="nearest")
    scale = np.maximum(scale, 1.0)
    screen = np.empty(y.shape, np.float32)
    outlying = np.empty(y.shape, bool)
    candidate = np.empty(y.shape, bool)
    screen_voxels(rho, scale * np.sqrt(1 + _MEDIAN4_VAR), usable, bright, neighbours,
                  float(sigma), float(candidate_sigma), screen, outlying, candidate)
    return screen, rho, scale, bright, outlying, candidate


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
class _Block:
    """What the stages of :func:`clip_block_robust` share: a block's data (ERR already
    scaled by ``err_factor``), the screen's results, the options, and the arrays
    the fits update in place: ``rho``, ``value``, ``variance`` and ``aside`` (the
    neighbours each prediction left out because they sided with the voxel).
    ``common`` holds the keyword arguments of every :func:`_predict` call."""

    y: np.ndarray
    e: np.ndarray
    usable: np.ndarray
    neighbours: np.ndarray
    scale: np.ndarray
    bright: np.ndarray
    outlying: np.ndarray
    candidate: np.ndarray
    unusable_before: np.ndarray
    common: dict
    rho: np.ndarray
    value: np.ndarray
    variance: np.ndarray
    aside: np.ndarray
    sigma: float
    grow_sigma: float
    half_window: int
    grow: int
    candidate_sigma: float
    bright_snr: float


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


def clip_block_robust(y, e, usable, neighbours, *, sky=None, sigma=DEFAULTS["sigma"],
                      grow_sigma=DEFAULTS["grow_sigma"], half_window=DEFAULTS["half_window"],
                      model_error=DEFAULTS["model_error"],
                      scale_window=DEFAULTS["scale_window"], grow=DEFAULTS["grow"],
                      candidate_sigma=DEFAULTS["candidate_sigma"],
                      bright_snr=DEFAULTS["bright_snr"], passes=DEFAULTS["passes"],
                      ceiling_ratio=DEFAULTS["ceiling_ratio"], err_factor=1.0):
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
        whose baseline exceeds ``bright_snr`` x ERR, are fitted. A prediction on
        such a spectrum, or above ``bright_snr`` x ERR, is stated no more precise
        than the noise of the neighbour values it combines.
    passes : int
        Fits of the voxels near flags (default 3: the first and two refits; each refit
        after the first only near the flags the one before changed).
    ceiling_ratio : float
        The neighbour ceiling (default 20; ``np.inf`` turns it off).
    err_factor : float
        ERR is multiplied by this first: how many times the noise exceeds ERR,
        from :func:`measure_err_factor` on the whole cube (1: ERR is right).

    Returns
    -------
    flags : ndarray of bool
    prediction : RobustPrediction
        Its values and variances are in the units of ``y``; the variance of a
        prediction includes ``err_factor``.
    """
    n_planes, m = y.shape
    y = np.ascontiguousarray(y, dtype=float)
    e = np.ascontiguousarray(e, dtype=float)
    if err_factor != 1.0:
        e = e * float(err_factor)
    usable = np.ascontiguousarray(usable, dtype=bool)
    neighbours = np.ascontiguousarray(neighbours, dtype=np.int64)
    sky = np.ones(m, bool) if sky is None else np.asarray(sky, bool)
    # rho starts as the screen's verdict, which is kept for the neighbour tests;
    # fits overwrite rho
    screen, rho, scale, bright, outlying, candidate = _screen(
        y, e, usable, sky, neighbours, scale_window=scale_window, bright_snr=bright_snr,
        sigma=sigma, candidate_sigma=candidate_sigma)
    cand_k, cand_s = _true_positions(candidate)
    value = np.full(y.shape, np.nan, np.float32)
    variance = np.full(y.shape, np.nan, np.float32)
    opts = {"half_window": half_window, "model_error": model_error,
            "candidate_sigma": candidate_sigma, "bright_snr": bright_snr}
    unusable_before = np.empty((n_planes + 1, m), np.int16 if n_planes < 2**15 else np.int32)
    count_unusable(usable, unusable_before)
    common = {"opts": opts, "screen": screen, "bright": bright,
              "unusable_before": unusable_before}
    # the neighbours each prediction left out because they sided with the voxel
    aside = np.zeros(y.shape, np.uint8)
    b = _Block(y=y, e=e, usable=usable, neighbours=neighbours, scale=scale, bright=bright,
               outlying=outlying, candidate=candidate, unusable_before=unusable_before,
               common=common, rho=rho, value=value, variance=variance, aside=aside,
               sigma=sigma, grow_sigma=grow_sigma, half_window=half_window, grow=grow,
               candidate_sigma=candidate_sigma, bright_snr=bright_snr)

    # the first fits of the candidates, and the neighbour ceiling's flags
    _fit(b, cand_k, cand_s, None)
    over_ceiling = _ceiling_flags(b, cand_k, cand_s, ceiling_ratio)
    _keep_over_ceiling(rho, *over_ceiling)
    # the first pass's flags, grown, then refitted and grown again passes - 1 times
    first = _first_pass(b, cand_k, cand_s)
    seed = np.abs(first.rho) > sigma
    flags, fk, fs = _grow(first.k[seed], first.s[seed], rho, usable, neighbours, grow_sigma,
                          grow)
    flags, fk, fs = _refit_passes(b, first, flags, fk, fs, over_ceiling, passes)
    # the unflagged tails of strong flags, checked once more (flags grows in place)
    fk, fs = _flag_tails(b, flags, fk, fs)
    # A flag next to a flag of the opposite sign on the same plane may be an echo:
    # a residual in a neighbour that its fit held in the basis pulls the
    # prediction its way, and the voxel stands out the other way. Such a voxel,
    # flagged on its own verdict, is refitted with the flags left out of its
    # basis and window, and cleared where the refit finds nothing, unless the
    # refit is far vaguer than the fit it replaces (it could not confirm a hit).
    if fk.size:
        _clear_echoes(fk, fs, flags, (rho, value, variance, aside), neighbours, sigma,
                      partial(_fit, b))
        fk, fs = _true_positions(flags)
    # replacement values (b.value) for the flags
    _replacement_values(b, flags, fk, fs)
    return flags, RobustPrediction(value, variance, rho, scale)


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
