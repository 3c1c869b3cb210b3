"""The array-level entry point: :func:`clip_cube` and its result."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import CubeFormatError, OptionError
from .layers import EXCLUDED, validate_layer_map
from .paper import clip_block_paper
from .robust import DEFAULTS as ROBUST_DEFAULTS
from .robust import (
    clip_block_robust,
    compact_planes,
    masked_median,
    measure_err_factor,
    neighbour_table,
    noise_columns,
    noise_planes,
    noise_ratio,
    robust_halo,
    usable_mask,
)

__all__ = ["ClipResult", "clip_cube", "cube_err_factor", "cube_noise_ratio", "array_reader",
           "halo_planes", "METHODS", "REPLACE"]

# The first method is the default.
METHODS = ("robust", "paper")
# Replacement choices; "model" (the robust prediction) needs method="robust".
REPLACE = ("model", "median", "interp", "nan")
DEFAULT_REPLACE = {"robust": "model", "paper": "median"}
INTERP_GAP = 10


@dataclass
class ClipResult:
    """Outcome of :func:`clip_cube`.

    Attributes
    ----------
    sci, err : ndarray
        Cleaned cubes (same dtype and shape as the input, native byte order).
    flags : ndarray of bool
        True where a voxel was replaced.
    layer_map : ndarray of int16
        The layer map used.
    method : str
    params : dict
        Parameters of the method, for provenance.
    """

    sci: np.ndarray
    err: np.ndarray
    flags: np.ndarray
    layer_map: np.ndarray
    method: str
    params: dict = field(default_factory=dict)

    @property
    def counts_per_group(self):
        """Replaced voxels per layer-map value: ``{0: sky, 1: layer 1, ...}``."""
        per_spaxel = self.flags.sum(axis=0)
        labels = self.layer_map.ravel()
        out = {}
        for g in np.unique(labels):
            if g == EXCLUDED:
                continue
            out[int(g)] = int(per_spaxel.ravel()[labels == g].sum())
        return out

    @property
    def n_flagged(self):
        return int(self.flags.sum())


# Robust mode keeps about 80 bytes of working arrays per clipped voxel of a block.
ROBUST_BLOCK_VOXELS = 8_000_000


def halo_planes(method="robust", **params):
    """Planes on each side a block needs so that block-wise clipping equals whole-cube clipping.

    The result of a method for one plane may depend only on planes within this
    distance; out-of-core processing reads blocks of planes with this many extra
    planes on each side and keeps only the block's own planes. Paper mode works on
    each plane alone, so its halo is 0 (plus ``interp_gap`` with ``replace="interp"``).
    Robust mode fits windows of ``half_window`` planes in two passes
    (:func:`layerclip.robust.robust_halo`).

    Parameters
    ----------
    method : {"robust", "paper"}
    **params
        The options given to :func:`clip_cube` (``replace``, ``grow``,
        ``half_window``, ``scale_window``, ``interp_gap``; others are ignored).
    """
    replace = params.get("replace") or DEFAULT_REPLACE.get(method, "median")
    gap = int(params.get("interp_gap") or INTERP_GAP) if replace == "interp" else 0
    if method == "paper":
        return gap
    if method == "robust":
        keys = ("half_window", "scale_window", "grow")
        opts = {k: params[k] for k in keys if params.get(k) is not None}
        return robust_halo(**opts, interp_gap=gap)
    raise OptionError(f"--method {method!r}: expected one of {', '.join(METHODS)}")


def cube_err_factor(read, n_planes, layer_map):
    """How many times the noise exceeds ERR over a whole cube (robust mode).

    Parameters
    ----------
    read : callable
        ``read(planes, cols)`` returns ``(sci, err, excluded)`` for the planes of
        the int array ``planes`` and the flat spaxel indices ``cols``, each of
        shape (planes.size, cols.size); ``excluded`` may be None
        (:func:`array_reader` makes one for arrays in memory).
    n_planes : int
    layer_map : ndarray of int, shape (ny, nx)

    Returns
    -------
    float
        :func:`layerclip.robust.measure_err_factor` at the planes of
        :func:`layerclip.robust.noise_planes` and the spaxels of
        :func:`layerclip.robust.noise_columns`, rounded to four decimals (the value
        used is the value recorded); 1 for a cube of fewer than seven planes.
    """
    sampled = _noise_sample(read, n_planes, layer_map)
    return 1.0 if sampled is None else _rounded_factor(*sampled)


def cube_noise_ratio(read, n_planes, layer_map):
    """The ratio of the noise to ERR that :func:`cube_err_factor` measures, before
    its tolerance (:func:`layerclip.robust.noise_ratio`; NaN where none can be
    measured)."""
    sampled = _noise_sample(read, n_planes, layer_map)
    return np.nan if sampled is None else noise_ratio(*sampled)


def array_reader(sci, err, excluded=None):
    """The ``read`` of :func:`cube_err_factor` for cubes in memory, shape (nw, ny, nx)."""
    n = np.shape(sci)[0]
    return lambda planes, cols: tuple(
        None if a is None else np.asarray(a).reshape(n, -1)[planes][:, cols]
        for a in (sci, err, excluded))


def _noise_sample(read, n_planes, layer_map):
    """``(y, e, usable, planes, cols)`` for :func:`layerclip.robust.noise_ratio`:
    each sampled plane with its baseline planes, seven in a row; None where the
    cube is too short."""
    cols = noise_columns(layer_map)
    centres = noise_planes(n_planes, cols.size)
    if centres.size == 0:
        return None
    sci, err, excluded = read((centres[:, None] + np.arange(-3, 4)).ravel(), cols)
    y = np.ascontiguousarray(sci, dtype=float)
    e = np.ascontiguousarray(err, dtype=float)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(y) & np.isfinite(e) & (e > 0)
    if excluded is not None:
        usable &= ~np.asarray(excluded, dtype=bool)
    return y, e, usable, 7 * np.arange(centres.size) + 3, np.arange(cols.size)


def _rounded_factor(y, e, usable, planes, cols):
    """:func:`layerclip.robust.measure_err_factor`, rounded to four decimals."""
    return round(measure_err_factor(y, e, usable, planes, cols), 4)


def _as_float_cube(array, name):
    array = np.asarray(array)
    if array.ndim != 3:
        raise CubeFormatError(f"{name}: expected a 3-D cube (wavelength, y, x), found shape "
                              f"{array.shape}")
    if array.dtype.kind != "f":
        raise CubeFormatError(f"{name}: expected floating-point data, found {array.dtype}")
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def clip_cube(sci, err, layer_map, *, method: Literal["robust", "paper"] = "robust",
              sigma=5.0, maxiters=5, excluded=None, block_planes=None, threads=1,
              replace: Literal["model", "median", "interp", "nan"] | None = None,
              grow=None, grow_sigma=None, model_error=None, half_window=None,
              ceiling_ratio=None, interp_gap=INTERP_GAP, err_factor=None):
    """Clip outliers from a cube.

    Parameters
    ----------
    sci, err : ndarray, shape (nw, ny, nx)
        Flux and 1-sigma uncertainty (float32 or float64, any byte order).
    layer_map : ndarray of int, shape (ny, nx)
        ``-1`` excluded, ``0`` sky, ``1..N`` target layers. Voxels of ``-1``
        spaxels are never flagged nor used.
    method : {"robust", "paper"}
        ``"robust"`` (default): every voxel is compared with a prediction fitted
        from its spatial neighbours' spectra, in units of its own ERR (see
        :mod:`layerclip.robust`). ``"paper"``: the released notebooks of Hutchison
        et al. (2024), exactly (per plane and layer, median and std).
    sigma : float, optional
        Clipping threshold (default 5): standard deviations of the group (paper)
        or of the normalised residual (robust).
    maxiters : int or None, optional
        Paper mode: most clipping passes per group and plane (default 5).
    excluded : ndarray of bool, optional
        True for voxels with no usable data (e.g. DQ DO_NOT_USE). NaN SCI values are
        excluded in any case. Excluded voxels are never flagged nor changed.
    block_planes : int, optional
        Planes processed per call (memory bound; results do not depend on it).
        Default: 512 in paper mode; in robust mode the whole cube when it holds at
        most ``ROBUST_BLOCK_VOXELS`` clipped voxels, else blocks of about that size.
    threads : int, optional
        Paper mode: threads sharing the blocks of planes (default 1; results do not
        depend on it). Robust mode runs in one thread.
    replace : {"model", "median", "interp", "nan"}, optional
        Value given to flagged voxels; default ``"model"`` for robust, ``"median"``
        for paper. ``"model"``: the robust prediction (the spaxel's own line
        profile scaled from its neighbours' spectra), ERR = the prediction's
        uncertainty. ``"median"``: the group's median in the plane (the paper's),
        ERR = the group's median ERR. ``"interp"``: linear interpolation along
        wavelength between the nearest usable, unflagged voxels of the same spaxel
        within ``interp_gap`` planes (one side only: that value; none: the
        ``model``/``median`` value), ERR propagated from the two voxels,
        ``sqrt((1-t)^2 e1^2 + t^2 e2^2)``. ``"nan"``: SCI and ERR set to NaN
        (files: DQ DO_NOT_USE|OUTLIER), as the jwst pipeline does.
    grow : int, optional
        Robust mode: growing steps to adjacent planes / spaxels (default 2; 0 off).
    grow_sigma : float, optional
        Robust mode: threshold for growing (default 3.5).
    model_error : float, optional
        Robust mode: weight of the fit window's leave-one-out misfit beyond noise in
        the prediction's variance (default 2).
    half_window : int, optional
        Robust mode: half-width of the fit window in planes (default 7).
    ceiling_ratio : float, optional
        Robust mode: a voxel brighter than this many times its fourth brightest
        neighbour's peak (within two planes) is flagged, whatever the fits say
        (default 20; ``np.inf`` turns the ceiling off).
    interp_gap : int, optional
        Largest distance, in planes, to the voxels ``replace="interp"`` uses.
    err_factor : float, optional
        Robust mode: ERR is multiplied by this before clipping (ERR of replaced
        voxels included). Default: measured on this cube with
        :func:`cube_err_factor`, 1 unless ERR understates the noise by more than
        5%; recorded in ``params``. Give it to clip blocks of one cube alike.

    Returns
    -------
    ClipResult
    """
    sci = _as_float_cube(sci, "sci")
    err = _as_float_cube(err, "err")
    if sci.shape != err.shape:
        raise CubeFormatError(f"sci shape {sci.shape} and err shape {err.shape} differ")
    layer_map = validate_layer_map(layer_map, sci.shape[1:])
    if method not in METHODS:
        raise OptionError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if replace is None:
        replace = DEFAULT_REPLACE[method]
    if replace not in REPLACE:
        raise OptionError(f"--replace {replace!r}: expected one of {', '.join(REPLACE)}")
    if replace == "model" and method != "robust":
        raise OptionError("--replace model needs --method robust (it uses the robust "
                          "prediction)")
    if not np.isfinite(sigma) or sigma <= 0:
        raise OptionError(f"--sigma {sigma!r}: expected a positive number")
    if maxiters is not None and (int(maxiters) != maxiters or maxiters < 1):
        raise OptionError(f"--maxiters {maxiters!r}: expected a positive whole number")
    if excluded is not None and np.shape(excluded) != sci.shape:
        raise CubeFormatError(f"excluded mask shape {np.shape(excluded)} differs from "
                              f"sci shape {sci.shape}")
    if block_planes is None:
        m = max(int((layer_map >= 0).sum()), 1)
        block_planes = 512 if method == "paper" else max(ROBUST_BLOCK_VOXELS // m, 64)
    if int(block_planes) < 1:
        raise OptionError(f"block_planes {block_planes!r}: expected a positive whole number")
    if int(interp_gap) < 1:
        raise OptionError(f"interp_gap {interp_gap!r}: expected a positive whole number")
    robust_opts = {}
    for name, value in (("grow", grow), ("grow_sigma", grow_sigma),
                        ("model_error", model_error), ("half_window", half_window)):
        if value is None:
            continue
        if not np.isfinite(value) or value < 0:
            raise OptionError(f"--{name.replace('_', '-')} {value!r}: expected a "
                              "non-negative number")
        robust_opts[name] = int(value) if name in ("grow", "half_window") else float(value)
    if ceiling_ratio is not None:
        if not ceiling_ratio > 1:
            raise OptionError(f"--ceiling-ratio {ceiling_ratio!r}: expected a number above 1 "
                              "(inf turns the ceiling off)")
        robust_opts["ceiling_ratio"] = float(ceiling_ratio)
    if err_factor is not None and not (np.isfinite(err_factor) and err_factor > 0):
        raise OptionError(f"--err-factor {err_factor!r}: expected a positive number (how "
                          "many times the noise exceeds ERR)")

    nw, ny, nx = sci.shape
    if method == "paper" and replace == "median":
        return _clip_paper_median(sci, err, layer_map, excluded, sigma=sigma,
                                  maxiters=maxiters, block_planes=int(block_planes),
                                  threads=int(threads))
    index, neighbours = neighbour_table(layer_map)
    labels = layer_map.ravel()[index]
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    step = int(block_planes)
    # robust mode: how far ERR understates the noise, measured on the whole cube
    # (in one block, from the block's arrays, below: the same planes, spaxels and
    # values, so the same number)
    measure_in_block = method == "robust" and err_factor is None and step >= nw
    if method == "robust" and err_factor is None and not measure_in_block:
        err_factor = cube_err_factor(array_reader(sci, err, excluded), nw, layer_map)
    halo = halo_planes(method, replace=replace, interp_gap=interp_gap, **robust_opts)
    outputs = None
    for start in range(0, nw, step):
        stop = min(start + step, nw)
        lo, hi = max(0, start - halo), min(nw, stop + halo)
        # read the input, not the output (earlier blocks replaced voxels in the halo);
        # robust mode works in float64
        if method == "paper":
            y = np.take(sci.reshape(nw, ny * nx)[lo:hi], index, axis=1)
            e = np.take(err.reshape(nw, ny * nx)[lo:hi], index, axis=1)
        else:
            y = compact_planes(sci.reshape(nw, ny * nx)[lo:hi], index)
            e = compact_planes(err.reshape(nw, ny * nx)[lo:hi], index)
        held_out = None if excluded is None else \
            np.asarray(excluded[lo:hi], dtype=bool).reshape(hi - lo, -1)[:, index]
        pred = None
        if method == "paper":
            bad = ~np.isfinite(y)
            if held_out is not None:
                bad |= held_out
            usable = ~bad
            # (the median replacement runs in _clip_paper_median; the block's values
            # are kept for the others, and clip_block_paper works in place)
            f = clip_block_paper(y.copy(), e.copy(), bad, groups, sigma=sigma,
                                 maxiters=maxiters)
            del bad
        else:
            # (finite SCI, finite positive ERR, not excluded)
            usable = usable_mask(y, e)
            if held_out is not None:
                usable &= ~held_out
            if measure_in_block:
                cols = np.searchsorted(index, noise_columns(layer_map))
                err_factor = _rounded_factor(y, e, usable, noise_planes(nw, cols.size), cols)
            robust_opts["err_factor"] = float(err_factor)
            f, pred = clip_block_robust(y, e, usable, neighbours, sky=labels == 0,
                                        sigma=sigma, **robust_opts)
        # write back the flagged voxels of the planes this block owns
        ks, ss = np.divmod(np.flatnonzero(f[start - lo:stop - lo]), f.shape[1])
        ks += start - lo
        new_y, new_e = _replacements(y, e, f, usable, pred, ks, ss, replace, groups,
                                     interp_gap)
        planes, cols = ks + lo, index[ss]
        # the outputs are made once the first block is clipped and its working arrays
        # are gone: a cube clipped in one block (each block of the out-of-core path)
        # then never holds both at once
        del y, e, f, pred, usable
        if outputs is None:
            outputs = sci.copy(), err.copy(), np.zeros(sci.shape, dtype=bool)
            # (planes, spaxels) views of the outputs, written in place block by block
            flat_sci, flat_err, flat_flags = (a.reshape(nw, ny * nx) for a in outputs)
        flat_flags[planes, cols] = True
        flat_sci[planes, cols] = new_y
        flat_err[planes, cols] = new_e
    params = {"sigma": float(sigma), "replace": replace}
    if method == "paper":
        params["maxiters"] = maxiters
    else:
        params.update({k: v for k, v in ROBUST_DEFAULTS.items() if k != "sigma"})
        params.update(robust_opts)
    if replace == "interp":
        params["interp_gap"] = int(interp_gap)
    out_sci, out_err, flags = outputs or (sci.copy(), err.copy(), np.zeros(sci.shape, bool))
    return ClipResult(sci=out_sci, err=out_err, flags=flags, layer_map=layer_map,
                      method=method, params=params)


def _clip_paper_median(sci, err, layer_map, excluded, *, sigma, maxiters, block_planes,
                       threads=1):
    """Paper mode as the notebooks run it, working in place on copies of the cubes.

    Each plane is independent, so blocks need no halo and the groups are taken
    straight from the flattened spatial axis (no compaction round trip).
    """
    nw, ny, nx = sci.shape
    out_sci, out_err, flags = sci.copy(), err.copy(), np.zeros(sci.shape, dtype=bool)
    # (planes, spaxels) views of the outputs, written in place block by block
    flat_sci, flat_err, flat_flags = (a.reshape(nw, ny * nx) for a in (out_sci, out_err, flags))
    labels = layer_map.ravel()
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels) if g != EXCLUDED]

    def run(start):
        planes = slice(start, min(start + block_planes, nw))
        bad = ~np.isfinite(flat_sci[planes])
        if excluded is not None:
            bad |= np.asarray(excluded[planes], dtype=bool).reshape(bad.shape)
        if not bad.any():
            bad = None
        flat_flags[planes] = clip_block_paper(flat_sci[planes], flat_err[planes], bad,
                                              groups, sigma=sigma, maxiters=maxiters)

    starts = range(0, nw, block_planes)
    if threads > 1 and len(starts) > 1:
        # Blocks write disjoint planes, and numpy releases the GIL in its sorts and
        # reductions, so threads share the work without changing the result.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, starts))
    else:
        for start in starts:
            run(start)
    return ClipResult(sci=out_sci, err=out_err, flags=flags, layer_map=layer_map,
                      method="paper",
                      params={"sigma": float(sigma), "replace": "median",
                              "maxiters": maxiters})


def _replacements(y, e, flags, usable, pred, ks, ss, replace, groups, interp_gap):
    """Replacement values and ERR for the flagged voxels ``(ks, ss)`` of a compact
    (planes, m) block (``flags`` holds all the block's flags)."""
    if ks.size == 0:
        return y[ks, ss], e[ks, ss]
    if replace == "nan":
        return np.full(ks.size, np.nan), np.full(ks.size, np.nan)
    if replace == "model":
        return pred.value[ks, ss], np.sqrt(pred.variance[ks, ss])
    good = usable & ~flags
    if replace == "median" or pred is None:
        # median of each group's usable, unflagged voxels in the plane (also the
        # fallback of "interp" in paper mode)
        med_y = np.full(y.shape, np.nan)
        med_e = np.full(y.shape, np.nan)
        for cols in groups:
            g = good[:, cols]
            med_y[:, cols] = masked_median(y[:, cols].T.astype(float), g.T)[:, None]
            med_e[:, cols] = masked_median(e[:, cols].T.astype(float), g.T)[:, None]
        if replace == "median":
            return med_y[ks, ss], med_e[ks, ss]
        fallback_y, fallback_e = med_y[ks, ss], med_e[ks, ss]
    else:
        fallback_y, fallback_e = pred.value[ks, ss], np.sqrt(pred.variance[ks, ss])
    iy, ie = _interpolate(y.astype(float), e.astype(float), good, interp_gap)
    iy, ie = iy[ks, ss], ie[ks, ss]
    none = ~np.isfinite(iy)
    iy[none] = fallback_y[none]
    ie[none] = fallback_e[none]
    return iy, ie


def _interpolate(y, e, good, gap):
    """Linear interpolation along axis 0 from the nearest ``good`` voxels within ``gap``."""
    n = y.shape[0]
    k = np.arange(n)[:, None]
    below = np.maximum.accumulate(np.where(good, k, -1), axis=0)
    above = np.minimum.accumulate(np.where(good, k, n)[::-1], axis=0)[::-1]
    has_lo = (below >= 0) & (k - below <= gap)
    has_hi = (above < n) & (above - k <= gap)
    cols = np.arange(y.shape[1])[None, :]
    lo = np.clip(below, 0, n - 1)
    hi = np.clip(above, 0, n - 1)
    y_lo, y_hi = y[lo, cols], y[hi, cols]
    e_lo, e_hi = e[lo, cols], e[hi, cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(has_lo & has_hi, (k - below) / np.maximum(above - below, 1), 0.0)
    value = np.where(has_lo & has_hi, (1 - t) * y_lo + t * y_hi,
                     np.where(has_lo, y_lo, np.where(has_hi, y_hi, np.nan)))
    error = np.where(has_lo & has_hi, np.sqrt(((1 - t) * e_lo) ** 2 + (t * e_hi) ** 2),
                     np.where(has_lo, e_lo, np.where(has_hi, e_hi, np.nan)))
    return value, error
