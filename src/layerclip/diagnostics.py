"""Diagnostics the paper relies on, on plain arrays (no files, no plots).

Hutchison et al. (2024) trust a cleaned cube only after looking at it: spectra of
benchmark spaxels and benchmark slices before and after, the log of replaced voxels
over the target mask, the spatially integrated target spectrum of several cleanings,
and the number of artifact spikes left in it. This module computes all of that:

* :func:`choose_benchmarks` picks benchmark slices and spaxels automatically (§2.2.1,
  §2.2.2 of the paper), :func:`group_stats` tabulates a slice per layer group;
* :func:`integrated_spectrum`, :func:`continuum_subtract`, :func:`line_mask_from_lines`
  and :func:`detect_line_planes` build the continuum-subtracted, line-masked integrated
  spectrum of Fig. 4;
* :func:`count_spikes` counts the leftover artifacts as the paper does (footnote 4:
  the peaks of the noise spikes; a spike spanning several planes counts once);
* :func:`to_flam` converts surface brightness (MJy/sr) to erg/s/cm2/A with the pixel
  area (``PIXAR_SR``), as the paper plots.

Mask convention: True means flagged / excluded / masked, everywhere.
"""

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from astropy import units as u
from scipy import ndimage

from .errors import CubeFormatError, LayerMapError, OptionError
from .layers import EXCLUDED, SKY
from .lines import C_KMS, LINES, vacuum_to_air

__all__ = [
    "Benchmarks",
    "SpikeCount",
    "FLAM_UNIT",
    "choose_benchmarks",
    "flag_density",
    "group_stats",
    "integrated_spectrum",
    "integrated_noise",
    "continuum_subtract",
    "line_mask_from_lines",
    "detect_line_planes",
    "count_spikes",
    "leftover_spikes",
    "line_flux",
    "to_flam",
    "flam_factor",
]

#: Unit of converted flux densities, as the paper plots them.
FLAM_UNIT = "erg / (s cm2 Angstrom)"


# --------------------------------------------------------------------------- benchmarks


@dataclass
class Benchmarks:
    """Benchmark slices and spaxels for checking a cleaning by eye.

    Attributes
    ----------
    sky_slice, target_slice : int
        Plane indices where replacements are densest in the sky and in the target.
    sky_spaxels : list of (int, int)
        (y, x) of the sky benchmark spaxels; ``sky_kinds`` says for each whether it is
        the ``"normal"`` one or sits on a ``"replaced"`` voxel of ``sky_slice``.
    target_spaxels : list of (int, int)
        (y, x) of the target benchmark spaxels, spread over the S/N layers;
        ``target_layers`` gives each one's layer and ``target_kinds`` whether it sits
        on a replaced voxel of ``target_slice`` (``"replaced"``) or was picked by S/N
        rank alone (``"normal"``).
    source : str
        ``"automatic"`` or ``"user"``.
    """

    sky_slice: int
    target_slice: int
    sky_spaxels: list = field(default_factory=list)
    sky_kinds: list = field(default_factory=list)
    target_spaxels: list = field(default_factory=list)
    target_layers: list = field(default_factory=list)
    target_kinds: list = field(default_factory=list)
    source: str = "automatic"

    def rows(self):
        """One dict per benchmark spaxel (for tables)."""
        out = []
        for (y, x), kind in zip(self.sky_spaxels, self.sky_kinds, strict=True):
            out.append({"group": "sky", "y": y, "x": x, "kind": kind,
                        "slice": self.sky_slice})
        for (y, x), layer, kind in zip(self.target_spaxels, self.target_layers,
                                       self.target_kinds, strict=True):
            out.append({"group": f"layer {layer}", "y": y, "x": x, "kind": kind,
                        "slice": self.target_slice})
        return out


def _check_cube(name, array, shape=None):
    array = np.asarray(array)
    if array.ndim != 3:
        raise CubeFormatError(f"{name}: expected a 3-D cube (wavelength, y, x), "
                              f"found shape {array.shape}")
    if shape is not None and array.shape != tuple(shape):
        raise CubeFormatError(f"{name}: shape {array.shape} differs from {tuple(shape)}")
    return array


def _check_layers(layer_map, shape):
    layer_map = np.asarray(layer_map)
    if layer_map.shape != tuple(shape):
        raise LayerMapError(f"layer map shape {layer_map.shape} does not match the cube's "
                            f"spatial shape {tuple(shape)}")
    return layer_map


def flag_density(flags, layer_map):
    """Replaced voxels per plane in the sky and in the target.

    Parameters
    ----------
    flags : ndarray of bool, shape (nw, ny, nx)
        True where a voxel was replaced.
    layer_map : ndarray of int, shape (ny, nx)

    Returns
    -------
    sky, target : ndarray of int, shape (nw,)
    """
    flags = _check_cube("flags", flags)
    layer_map = _check_layers(layer_map, flags.shape[1:])
    flat = flags.reshape(flags.shape[0], -1)
    labels = layer_map.ravel()
    sky = flat[:, labels == SKY].sum(axis=1)
    target = flat[:, labels > SKY].sum(axis=1)
    return sky, target


def _densest(counts, fallback):
    # NOTE: ties go to the first plane so the choice is reproducible.
    return int(np.argmax(counts)) if counts.max() > 0 else int(fallback)


def choose_benchmarks(original, cleaned, flags, layer_map, *, err=None, snr=None,
                      sky_slice=None, target_slice=None, sky_spaxels=None,
                      target_spaxels=None, n_target=4, window=40, clear=10.0):
    """Benchmark slices and spaxels, chosen automatically where not given.

    Sky (paper §2.2.1): the slice with the most (clear) replaced sky voxels, one
    "normal" sky spaxel (no replaced voxel within ``window`` planes of that slice,
    median level closest to the sky's) and three sky spaxels on the replaced voxels of
    that slice with the largest change, preferring separate artifacts. Target
    (§2.2.2): the slice with the most (clear) replaced target voxels, and ``n_target``
    spaxels spread over the S/N layers; within a layer a spaxel replaced in the target
    slice is preferred (largest change first), otherwise the spaxel at the matching
    S/N rank.

    Parameters
    ----------
    original, cleaned : ndarray, shape (nw, ny, nx)
        The cube before and after cleaning.
    flags : ndarray of bool, shape (nw, ny, nx)
        True where a voxel was replaced.
    layer_map : ndarray of int, shape (ny, nx)
        ``-1`` excluded, ``0`` sky, ``1..N`` target layers.
    err : ndarray, shape (nw, ny, nx), optional
        Uncertainty of ``original``; when given, replaced voxels are ranked by their
        change in units of ERR (so noisy field edges do not win), else by the change.
    snr : ndarray, shape (ny, nx), optional
        S/N map ranking target spaxels within a layer; by default the median of
        ``original`` over ``window`` planes around the target slice.
    sky_slice, target_slice : int, optional
        User-chosen benchmark slices.
    sky_spaxels, target_spaxels : sequence of (y, x), optional
        User-chosen benchmark spaxels.
    n_target : int, optional
        Target spaxels wanted (default 4, as in the paper).
    window : int, optional
        Half-width in planes of the window the spectra are shown in (default 40).
    clear : float, optional
        With ``err``, only replacements that changed the voxel by more than ``clear``
        ERR count when choosing the slices (default 10; all count if none does).

    Returns
    -------
    Benchmarks
    """
    original = _check_cube("original", original)
    cleaned = _check_cube("cleaned", cleaned, original.shape)
    flags = _check_cube("flags", flags, original.shape).astype(bool, copy=False)
    nw, ny, nx = original.shape
    layer_map = _check_layers(layer_map, (ny, nx))
    user = any(v is not None for v in (sky_slice, target_slice, sky_spaxels, target_spaxels))
    for name, value in (("sky slice", sky_slice), ("target slice", target_slice)):
        if value is not None and not 0 <= int(value) < nw:
            raise OptionError(f"{name} {value}: expected a plane index 0..{nw - 1}")
    for name, spaxels in (("sky spaxel", sky_spaxels), ("target spaxel", target_spaxels)):
        for y, x in spaxels or ():
            if not (0 <= y < ny and 0 <= x < nx):
                raise OptionError(f"{name} ({y}, {x}): outside the {ny} x {nx} field")

    change = np.abs(original.astype(float) - cleaned.astype(float))
    if err is not None:
        err = _check_cube("err", err, original.shape)
        with np.errstate(all="ignore"):
            change = change / np.where(err > 0, err, np.nan)
    change = np.nan_to_num(change, nan=0.0, posinf=0.0)
    # NOTE: with ERR known, only replacements that changed a voxel by more than
    # ``clear`` sigma count towards the slice choice: the paper picks slices where
    # artifacts are "clearly present", and marginal replacements (e.g. on faint line
    # wings left in the sky) would otherwise decide it.
    strong = flags & (change > clear) if err is not None else flags
    if not strong.any():
        strong = flags
    sky_counts, target_counts = flag_density(strong, layer_map)
    total = sky_counts + target_counts
    busiest = int(np.argmax(total)) if total.max() > 0 else nw // 2
    k_sky = int(sky_slice) if sky_slice is not None else _densest(sky_counts, busiest)
    k_tgt = int(target_slice) if target_slice is not None else _densest(target_counts, busiest)
    sky = layer_map == SKY

    # --- sky spaxels
    if sky_spaxels is not None:
        s_spax = [(int(y), int(x)) for y, x in sky_spaxels]
        s_kind = ["replaced" if flags[k_sky, y, x] else "normal" for y, x in s_spax]
    else:
        s_spax, s_kind = [], []
        lo, hi = max(0, k_sky - window), min(nw, k_sky + window + 1)
        quiet = sky & ~flags[lo:hi].any(axis=0)
        if not quiet.any():
            quiet = sky.copy()
        if quiet.any():
            block = original[lo:hi][:, quiet].astype(float)
            with np.errstate(all="ignore"), _quiet_nan_warnings():
                level = np.nanmedian(block, axis=0)
                typical = np.nanmedian(level)
            distance = np.abs(level - typical)
            distance[~np.isfinite(distance)] = np.inf
            ys, xs = np.nonzero(quiet)
            i = int(np.argmin(distance))
            s_spax.append((int(ys[i]), int(xs[i])))
            s_kind.append("normal")
        picked = _spread_picks(flags[k_sky] & sky, change[k_sky], 3)
        s_spax += picked
        s_kind += ["replaced"] * len(picked)

    # --- target spaxels
    layers = np.unique(layer_map[layer_map > SKY])
    if target_spaxels is not None:
        t_spax = [(int(y), int(x)) for y, x in target_spaxels]
        t_layer = [int(layer_map[y, x]) for y, x in t_spax]
        t_kind = ["replaced" if flags[k_tgt, y, x] else "normal" for y, x in t_spax]
    elif layers.size == 0:
        t_spax, t_layer, t_kind = [], [], []
    else:
        if snr is None:
            lo, hi = max(0, k_tgt - window), min(nw, k_tgt + window + 1)
            with np.errstate(all="ignore"), _quiet_nan_warnings():
                snr = np.nanmedian(original[lo:hi].astype(float), axis=0)
        snr = np.where(np.isfinite(snr), snr, -np.inf)
        # Spread n_target picks evenly over the layers present (low to high S/N).
        picks = layers[np.round(np.linspace(0, layers.size - 1, n_target)).astype(int)]
        t_spax, t_layer, t_kind = [], [], []
        used = np.zeros((ny, nx), dtype=bool)
        for layer in np.unique(picks):
            k = int((picks == layer).sum())
            members = (layer_map == layer)
            picked = _spread_picks(members & flags[k_tgt], change[k_tgt], k)
            for y, x in picked:
                t_spax.append((y, x))
                t_layer.append(int(layer))
                t_kind.append("replaced")
                used[y, x] = True
            rest = k - len(picked)
            if rest > 0:
                ys, xs = np.nonzero(members & ~used)
                ranked = np.argsort(snr[ys, xs], kind="stable")
                quant = np.round((np.arange(rest) + 0.5) / rest * ranked.size - 0.5)
                for i in np.unique(np.clip(quant, 0, ranked.size - 1).astype(int)):
                    j = ranked[i]
                    t_spax.append((int(ys[j]), int(xs[j])))
                    t_layer.append(int(layer))
                    t_kind.append("normal")
    return Benchmarks(sky_slice=k_sky, target_slice=k_tgt, sky_spaxels=s_spax,
                      sky_kinds=s_kind, target_spaxels=t_spax, target_layers=t_layer,
                      target_kinds=t_kind, source="user" if user else "automatic")


def _spread_picks(candidates, change, k):
    """Up to ``k`` candidate spaxels by decreasing change, preferring separate artifacts.

    A candidate touching (8-connected) an already picked spaxel most likely belongs to
    the same artifact; it is taken only when no separate one is left.
    """
    ys, xs = np.nonzero(candidates)
    order = np.argsort(-change[ys, xs], kind="stable")
    picked, later = [], []
    for i in order:
        y, x = int(ys[i]), int(xs[i])
        if any(abs(y - py) <= 1 and abs(x - px) <= 1 for py, px in picked):
            later.append((y, x))
        else:
            picked.append((y, x))
        if len(picked) == k:
            break
    return (picked + later)[:k]


class _quiet_nan_warnings:
    """Silence numpy's all-NaN slice RuntimeWarnings (expected for empty spaxels)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message="Mean of empty slice",
                                category=RuntimeWarning)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def group_stats(before, after, layer_map):
    """Per-group statistics of one slice before and after cleaning.

    Parameters
    ----------
    before, after : ndarray, shape (ny, nx)
        The slice in the original and the cleaned cube.
    layer_map : ndarray of int, shape (ny, nx)

    Returns
    -------
    list of dict
        One row per group (``sky``, ``layer 1`` ...): ``n`` finite values, and
        ``median``, ``mad`` (median absolute deviation from the median, unscaled),
        ``min``, ``max`` for ``before`` and ``after`` (keys ``median_before`` ...).
    """
    before = np.asarray(before, dtype=float)
    after = np.asarray(after, dtype=float)
    if before.ndim != 2 or after.shape != before.shape:
        raise CubeFormatError(f"slices: expected two 2-D images of the same shape, found "
                              f"{before.shape} and {after.shape}")
    layer_map = _check_layers(layer_map, before.shape)
    rows = []
    for g in np.unique(layer_map):
        if g == EXCLUDED:
            continue
        row = {"group": "sky" if g == SKY else f"layer {int(g)}", "label": int(g)}
        for name, image in (("before", before), ("after", after)):
            values = image[layer_map == g]
            values = values[np.isfinite(values)]
            row["n"] = int(values.size)
            if values.size:
                med = float(np.median(values))
                row[f"median_{name}"] = med
                row[f"mad_{name}"] = float(np.median(np.abs(values - med)))
                row[f"min_{name}"] = float(values.min())
                row[f"max_{name}"] = float(values.max())
            else:
                for stat in ("median", "mad", "min", "max"):
                    row[f"{stat}_{name}"] = float("nan")
        rows.append(row)
    return rows


# ------------------------------------------------------------------ integrated spectra


def _target_columns(cube, target, excluded):
    target = np.asarray(target, dtype=bool)
    if target.shape != cube.shape[1:]:
        raise LayerMapError(f"target mask shape {target.shape} does not match the cube's "
                            f"spatial shape {cube.shape[1:]}")
    if not target.any():
        raise LayerMapError("target mask is empty: no spaxel to integrate")
    values = np.asarray(cube[:, target], dtype=float)
    bad = ~np.isfinite(values)
    if excluded is not None:
        bad |= np.asarray(excluded)[:, target]
    return values, bad


def integrated_spectrum(sci, target, *, excluded=None):
    """Spatially integrated spectrum: the sum over target spaxels of every plane.

    Parameters
    ----------
    sci : ndarray, shape (nw, ny, nx)
    target : ndarray of bool, shape (ny, nx)
        True on the target spaxels (e.g. ``layer_map > 0``).
    excluded : ndarray of bool, shape (nw, ny, nx), optional
        Voxels left out of the sum (NaN and infinite values are in any case).

    Returns
    -------
    ndarray of float, shape (nw,)
        NaN for planes with no usable target voxel.
    """
    sci = _check_cube("sci", sci)
    values, bad = _target_columns(sci, target, excluded)
    total = np.where(bad, 0.0, values).sum(axis=1)
    return np.where(bad.all(axis=1), np.nan, total)


def integrated_noise(err, target, *, excluded=None):
    """1-sigma noise of :func:`integrated_spectrum`: target ERR summed in quadrature."""
    err = _check_cube("err", err)
    values, bad = _target_columns(err, target, excluded)
    total = np.sqrt(np.where(bad, 0.0, values * values).sum(axis=1))
    return np.where(bad.all(axis=1), np.nan, total)


def _fill_masked(values, masked):
    """Linear interpolation over masked entries (edges take the nearest good value)."""
    good = ~masked
    if good.sum() == 0:
        return np.full_like(values, np.nan)
    idx = np.arange(values.size)
    return np.interp(idx, idx[good], values[good])


def continuum_subtract(spectrum, *, mask=None, window=51):
    """Subtract a running-median continuum from a 1-D spectrum.

    Masked planes (lines) and NaNs are bridged by linear interpolation before the
    running median, so lines do not lift the continuum; they are NaN in the result.
    Spikes narrower than half the window do not move a running median.

    Parameters
    ----------
    spectrum : ndarray, shape (nw,)
    mask : ndarray of bool, shape (nw,), optional
        True on planes to leave out (emission lines).
    window : int, optional
        Running-median width in planes (default 51, odd).

    Returns
    -------
    residual : ndarray, shape (nw,)
        ``spectrum - continuum``, NaN where masked or not finite.
    continuum : ndarray, shape (nw,)
    """
    spectrum = np.asarray(spectrum, dtype=float)
    if spectrum.ndim != 1:
        raise ValueError(f"spectrum: expected a 1-D array, found shape {spectrum.shape}")
    masked = ~np.isfinite(spectrum)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != spectrum.shape:
            raise ValueError(f"mask: shape {mask.shape} differs from the spectrum's "
                             f"{spectrum.shape}")
        masked |= mask
    window = int(window)
    if window < 3:
        raise OptionError(f"continuum window {window}: expected at least 3 planes")
    window = min(window | 1, max(3, (spectrum.size | 1) - 2 if spectrum.size > 3 else 3))
    filled = _fill_masked(spectrum, masked)
    continuum = ndimage.median_filter(filled, size=window, mode="nearest")
    residual = np.where(masked, np.nan, spectrum - continuum)
    return residual, continuum


def line_mask_from_lines(wavelength_um, *, z, lines=None, air=False, width_kms=1000.0):
    """Planes within ``width_kms / 2`` of known emission lines at redshift ``z``.

    Parameters
    ----------
    wavelength_um : ndarray, shape (nw,)
    z : float
        Redshift.
    lines : iterable of float, optional
        Rest vacuum wavelengths in Angstrom (default: every line of
        :data:`layerclip.lines.LINES`).
    air : bool, optional
        The wavelength axis is in air.
    width_kms : float, optional
        Full width of each masked window (default 1000 km/s).

    Returns
    -------
    ndarray of bool, shape (nw,)
        True on masked planes.
    """
    wave = np.asarray(wavelength_um, dtype=float)
    rest = np.asarray(list(LINES.values()) if lines is None else list(lines), dtype=float)
    obs = rest * (1 + float(z))
    if air:
        obs = np.asarray(vacuum_to_air(obs), dtype=float)
    obs_um = obs * 1e-4
    half = obs_um * width_kms / 2 / C_KMS
    return (np.abs(wave[:, None] - obs_um[None, :]) <= half[None, :]).any(axis=1)


def detect_line_planes(sci, err, target, *, excluded=None, nsigma=2.0, min_fraction=0.15,
                       min_spaxels=6, window=51, grow=2):
    """Planes holding emission lines of the target, found from the cube itself.

    In the integrated spectrum a line and an artifact spike can look alike (both a few
    planes wide). In the cube they differ: a line lifts many target spaxels at once, an
    artifact one to a few. A plane is a line plane when at least
    ``max(min_spaxels, min_fraction * n_target)`` target spaxels lie more than
    ``nsigma`` ERR above their own running-median continuum.

    Parameters
    ----------
    sci, err : ndarray, shape (nw, ny, nx)
    target : ndarray of bool, shape (ny, nx)
    excluded : ndarray of bool, optional
    nsigma : float, optional
        Per-voxel excess counted (default 2).
    min_fraction, min_spaxels : float, int, optional
        How many target spaxels must show the excess (defaults 0.15 and 6).
    window : int, optional
        Running-median width in planes for the per-spaxel continuum (default 51).
    grow : int, optional
        Planes added on each side of every detected run (default 2).

    Returns
    -------
    ndarray of bool, shape (nw,)
        True on line planes.
    """
    sci = _check_cube("sci", sci)
    err = _check_cube("err", err, sci.shape)
    values, bad = _target_columns(sci, target, excluded)
    noise, bad_e = _target_columns(err, target, excluded)
    bad |= bad_e | (noise <= 0)
    nw, n = values.shape
    window = min(int(window) | 1, max(3, (nw | 1) - 2 if nw > 3 else 3))
    with _quiet_nan_warnings():
        fill = np.nanmedian(np.where(bad, np.nan, values), axis=0)
    filled = np.where(bad, np.nan_to_num(fill)[None, :], values)
    continuum = ndimage.median_filter(filled, size=(window, 1), mode="nearest")
    with np.errstate(all="ignore"):
        excess = (values - continuum) / noise > nsigma
    count = (excess & ~bad).sum(axis=1)
    need = max(int(min_spaxels), int(np.ceil(min_fraction * n)))
    lines = count >= need
    if grow > 0 and lines.any():
        lines = ndimage.binary_dilation(lines, iterations=int(grow))
    return lines


# ---------------------------------------------------------------------- spike counting


@dataclass
class SpikeCount:
    """Leftover artifact spikes in a continuum-subtracted, line-masked spectrum.

    Attributes
    ----------
    count : int
        Number of spikes (runs of adjacent planes beyond the threshold count once).
    peaks : ndarray of int
        Plane index of each spike's peak.
    heights : ndarray of float
        Residual at each peak (signed).
    noise : float or ndarray
        1-sigma noise used (robust scatter, or the per-plane noise given).
    nsigma : float
        Threshold in units of ``noise``.
    wave_range : tuple of float or None
        Spectral range searched, microns (None: every plane).
    n_planes : int
        Planes searched (finite, unmasked, inside the range).
    sign : str
        ``"positive"``, ``"negative"`` or ``"both"``.
    """

    count: int
    peaks: np.ndarray
    heights: np.ndarray
    noise: object
    nsigma: float
    wave_range: tuple | None
    n_planes: int
    sign: str

    def describe(self, unit=""):
        rng = ("all planes" if self.wave_range is None
               else f"{self.wave_range[0]:.5g}-{self.wave_range[1]:.5g} um")
        return (f"{self.count} spikes beyond {self.nsigma:g} sigma ({self.sign}) in "
                f"{self.n_planes} line-free planes, {rng}")


def robust_sigma(values):
    """1.4826 times the median absolute deviation of the finite values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def count_spikes(residual, *, wavelength_um=None, wave_range=None, nsigma=5.0, noise=None,
                 sign: Literal["positive", "negative", "both"] = "both", merge=1):
    """Count artifact spikes in a continuum-subtracted, line-masked spectrum.

    As the paper counts leftover artifacts (footnote 4), each spike is counted once
    at its peak, even when it spans several planes: adjacent planes beyond the
    threshold (and gaps of up to ``merge`` planes between them) form one spike.

    Parameters
    ----------
    residual : ndarray, shape (nw,)
        Continuum-subtracted spectrum, NaN on masked planes (lines, no data).
    wavelength_um : ndarray, shape (nw,), optional
        Needed with ``wave_range``.
    wave_range : (float, float), optional
        Spectral range searched, microns.
    nsigma : float, optional
        Threshold in units of the noise (default 5).
    noise : float or ndarray, optional
        1-sigma noise (a number or one value per plane); by default 1.4826 x MAD of
        the searched residual.
    sign : {"positive", "negative", "both"}, optional
        Which spikes to count (default both: cleaning can leave negative holes too).
    merge : int, optional
        Gap in planes bridged inside one spike (default 1). Masked planes are gaps too.

    Returns
    -------
    SpikeCount
    """
    residual = np.asarray(residual, dtype=float)
    if residual.ndim != 1:
        raise ValueError(f"residual: expected a 1-D array, found shape {residual.shape}")
    if sign not in ("positive", "negative", "both"):
        raise OptionError(f"sign {sign!r}: expected positive, negative or both")
    if not np.isfinite(nsigma) or nsigma <= 0:
        raise OptionError(f"nsigma {nsigma!r}: expected a positive number")
    searched = np.isfinite(residual)
    if wave_range is not None:
        if wavelength_um is None:
            raise OptionError("wave_range needs wavelength_um")
        wave = np.asarray(wavelength_um, dtype=float)
        if wave.shape != residual.shape:
            raise ValueError(f"wavelength_um: shape {wave.shape} differs from the "
                             f"residual's {residual.shape}")
        lo, hi = sorted(float(v) for v in wave_range)
        searched &= (wave >= lo) & (wave <= hi)
        wave_range = (lo, hi)
    values = np.where(searched, residual, np.nan)
    sigma = robust_sigma(values) if noise is None else noise
    sigma_arr = np.broadcast_to(np.asarray(sigma, dtype=float), residual.shape)
    with np.errstate(invalid="ignore"):
        z = values / sigma_arr
    if sign == "positive":
        score = np.where(z > nsigma, z, 0.0)
    elif sign == "negative":
        score = np.where(z < -nsigma, -z, 0.0)
    else:
        score = np.where(np.abs(z) > nsigma, np.abs(z), 0.0)
    score = np.nan_to_num(score)
    over = score > 0
    joined = over
    if merge > 0 and over.any():
        # Closing joins runs separated by <= merge planes without growing their ends.
        joined = ndimage.binary_closing(np.pad(over, merge), iterations=int(merge))[merge:-merge]
        joined |= over
    labels, n = ndimage.label(joined)
    if n:
        peaks = np.asarray(ndimage.maximum_position(score, labels, np.arange(1, n + 1)),
                           dtype=int).ravel()
    else:
        peaks = np.zeros(0, dtype=int)
    return SpikeCount(count=int(n), peaks=peaks, heights=residual[peaks], noise=sigma,
                      nsigma=float(nsigma), wave_range=wave_range,
                      n_planes=int(searched.sum()), sign=sign)


def leftover_spikes(spectrum, *, line_mask=None, wavelength_um=None, wave_range=None,
                    nsigma=5.0, noise=None, window=51, sign="both"):
    """Continuum-subtract and line-mask a spectrum, then :func:`count_spikes`.

    Returns
    -------
    (SpikeCount, residual)
    """
    residual, _ = continuum_subtract(spectrum, mask=line_mask, window=window)
    return count_spikes(residual, wavelength_um=wavelength_um, wave_range=wave_range,
                        nsigma=nsigma, noise=noise, sign=sign), residual


def line_flux(spectrum, wavelength_um, planes, *, mask=None, window=51, per_angstrom=True):
    """Integrated flux of a line: continuum-subtracted spectrum summed over ``planes``.

    Parameters
    ----------
    spectrum : ndarray, shape (nw,)
        Integrated spectrum (flux density per Angstrom, or per micron).
    wavelength_um : ndarray, shape (nw,)
    planes : array of int
        Planes of the line window.
    mask : ndarray of bool, optional
        Planes left out of the continuum fit (the line itself is always left out).
    window : int, optional
        Running-median width for the continuum.
    per_angstrom : bool, optional
        Multiply by the plane width in Angstrom (True, default) or in microns.

    Returns
    -------
    float
    """
    spectrum = np.asarray(spectrum, dtype=float)
    wave = np.asarray(wavelength_um, dtype=float)
    planes = np.asarray(planes, dtype=int)
    masked = np.zeros(spectrum.shape, dtype=bool) if mask is None else np.asarray(mask).copy()
    masked[planes] = True
    _, continuum = continuum_subtract(spectrum, mask=masked, window=window)
    step = np.abs(np.gradient(wave)) * (1e4 if per_angstrom else 1.0)
    values = (spectrum - continuum)[planes] * step[planes]
    return float(np.nansum(values))


# ---------------------------------------------------------------------------- units


def flam_factor(wavelength_um, *, unit, pixel_area_sr=None):
    """Per-plane factor converting a cube's flux unit to erg/s/cm2/A (per spaxel).

    Surface brightness (e.g. MJy/sr, as JWST cubes carry) is multiplied by the pixel
    solid angle (``PIXAR_SR``), then converted from per-frequency to per-wavelength:
    ``F_lambda = S * PIXAR_SR * c / lambda^2``, as the paper plots. Flux densities per
    wavelength (MUSE's 1e-20 erg/s/cm2/A, KCWI's FLAM16) are only rescaled.

    Parameters
    ----------
    wavelength_um : ndarray, shape (nw,)
    unit : str or `~astropy.units.Unit`
        The cube's BUNIT.
    pixel_area_sr : float, optional
        Spaxel solid angle in steradian; needed for surface brightness units.

    Returns
    -------
    ndarray of float, shape (nw,)

    Raises
    ------
    OptionError
        When the unit is unknown or cannot be converted.
    """
    wave = np.asarray(wavelength_um, dtype=float) * u.um
    unit = _parse_unit(unit)
    flam = u.Unit("erg / (s cm2 Angstrom)")
    one = 1.0 * unit
    per_area = unit * u.sr
    if per_area.is_equivalent(u.Jy) or per_area.is_equivalent(flam):
        if pixel_area_sr is None or not np.isfinite(pixel_area_sr) or pixel_area_sr <= 0:
            raise OptionError(f"unit {unit}: a surface brightness needs the pixel area "
                              "(PIXAR_SR) to convert to erg/s/cm2/A")
        one = one * (float(pixel_area_sr) * u.sr)
    try:
        factor = one.to(flam, equivalencies=u.spectral_density(wave))
    except u.UnitConversionError as exc:
        raise OptionError(f"unit {unit}: cannot convert to erg/s/cm2/A ({exc})") from None
    return np.broadcast_to(np.asarray(factor.value, dtype=float), wave.shape).copy()


def _parse_unit(unit):
    if isinstance(unit, u.UnitBase):
        return unit
    text = str(unit).strip()
    if not text:
        raise OptionError("the cube has no BUNIT: cannot convert to erg/s/cm2/A")
    # FLAM16 (KCWI) and FLAM (IRAF habit) are not FITS-standard unit strings.
    special = {"FLAM": "erg / (s cm2 Angstrom)", "FLAM16": "1e-16 erg / (s cm2 Angstrom)",
               "FLAM17": "1e-17 erg / (s cm2 Angstrom)"}
    if text.upper() in special:
        return u.Unit(special[text.upper()])
    try:
        return u.Unit(text, format="fits", parse_strict="raise")
    except ValueError:
        try:
            return u.Unit(text, parse_strict="raise")
        except ValueError:
            raise OptionError(f"BUNIT {text!r}: not a unit astropy understands") from None


def to_flam(values, wavelength_um, *, unit, pixel_area_sr=None):
    """Convert a spectrum (or cube, wavelength first) to erg/s/cm2/A.

    See :func:`flam_factor`. ``values`` has the wavelength along axis 0.
    """
    values = np.asarray(values, dtype=float)
    factor = flam_factor(wavelength_um, unit=unit, pixel_area_sr=pixel_area_sr)
    if values.shape[0] != factor.size:
        raise ValueError(f"values: {values.shape[0]} planes, wavelength has {factor.size}")
    return values * factor.reshape((-1,) + (1,) * (values.ndim - 1))
