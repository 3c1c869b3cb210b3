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
:mod:`layerclip.robust_screen`; this module keeps the screen and the entry point,
and :mod:`layerclip.robust_passes` the decisions between the stages after the
screen. ``tests/robust_reference.py`` holds the vectorised NumPy version of the
fits that the kernels are checked against.
"""

from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import ndimage

from .robust_fits import count_unusable
from .robust_passes import (
    _CEILING_PLANES,
    _MEDIAN4_VAR,
    _TAIL_ROUNDS,
    _ceiling_flags,
    _clear_echoes,
    _first_pass,
    _fit,
    _flag_tails,
    _grow,
    _keep_over_ceiling,
    _refit_passes,
    _replacement_values,
    _true_positions,
)
from .robust_screen import (
    gather_columns,
    noise_residual_median,
    plane_mad,
    screen_residual,
    screen_voxels,
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
# Planes of the spectral baseline.
_BASELINE_OFFSETS = (-3, -2, 2, 3)
# Sky spaxels a plane's scale is measured on: every n-th, n = count // 256 (so at most
# 511 of them, fixed by position).
_SCALE_SPAXELS = 256
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


@dataclass(eq=False)
class _Block:
    """What the stages of :func:`clip_block_robust` share: a block's data (ERR already
    scaled by ``err_factor``), the screen's results, the options, and the arrays
    the fits update in place: ``rho``, ``value``, ``variance`` and ``aside`` (the
    neighbours each prediction left out because they sided with the voxel).
    ``common`` holds the keyword arguments of every
    :func:`layerclip.robust_passes._predict` call."""

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
