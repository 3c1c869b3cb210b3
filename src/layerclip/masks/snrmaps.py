"""S/N maps for target selection: one line, several lines, or the continuum (array-level).

Every map collapses planes of SCI (summed) and ERR (summed in quadrature),
skipping NaN and DO_NOT_USE voxels, and records how many planes each spaxel
used. Line windows are velocity windows (750 km/s full width by default, the
paper's 700-800 km/s) around each line's observed wavelength.
"""

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import OptionError, WavelengthError
from ..lines import LINES, line_window, observed_wavelength
from ..snr import collapsed_sums, robust_snr

__all__ = ["SNRMap", "line_snr_map", "continuum_snr_map", "line_windows"]

log = logging.getLogger(__name__)


@dataclass
class SNRMap:
    """An S/N map and how it was made.

    Attributes
    ----------
    snr : ndarray of float, shape (ny, nx)
        NaN where a spaxel has no usable plane.
    signal, noise : ndarray of float, shape (ny, nx)
        Summed SCI and quadrature-summed ERR (for Voronoi binning).
    n_used : ndarray of int, shape (ny, nx)
        Planes that contributed to each spaxel.
    planes : ndarray of int
        Every plane collapsed (the union of the windows).
    kind : {"line", "continuum"}
    windows : list of (str, float)
        Name and observed centre (microns) of each line window (for a continuum
        map: the masked windows).
    width_kms : float
    z : float or None
    robust : ndarray or None
        :func:`layerclip.snr.robust_snr` over the same planes (line maps only),
        used to spot artifact-inflated spaxels.
    """

    snr: np.ndarray
    signal: np.ndarray
    noise: np.ndarray
    n_used: np.ndarray
    planes: np.ndarray
    kind: str = "line"
    windows: list = field(default_factory=list)
    width_kms: float = 750.0
    z: float | None = None
    robust: np.ndarray | None = None

    def describe(self):
        """One line saying what was collapsed."""
        wins = ", ".join(f"{n}@{c:.5f}um" for n, c in self.windows)
        if self.kind == "continuum":
            masked = f" with {len(self.windows)} line window(s) masked" if self.windows else ""
            return f"continuum S/N from {self.planes.size} planes{masked}"
        z = f" z={self.z:g}" if self.z is not None else ""
        return (f"line S/N from {self.planes.size} planes: {wins}{z} "
                f"width={self.width_kms:g}km/s")


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    return list(value)


def line_windows(wavelength, *, lines=None, z=None, obs_wave=None, width_kms=750.0,
                 air=False, skip_outside=False):
    """Plane indices of the velocity window around each line.

    Parameters
    ----------
    wavelength : ndarray
        Wavelength of every plane, microns.
    lines : str, float or sequence, optional
        Line names or rest wavelengths (Angstrom); need ``z``.
    z : float, optional
    obs_wave : float or sequence, optional
        Observed wavelengths in microns (instead of, or in addition to, ``lines``).
    width_kms : float, optional
        Full width of each window (default 750 km/s).
    air : bool, optional
        The cube's axis is in air wavelengths.
    skip_outside : bool, optional
        Leave out lines outside the cube's range instead of raising.

    Returns
    -------
    list of (name, centre_um, planes)
    """
    out = []
    for line in _as_list(lines):
        name, centre = observed_wavelength(line, z, air=air)
        out.append((name, centre, f"--line {line} --z {z}"))
    for wave in _as_list(obs_wave):
        try:
            centre = float(wave)
        except (TypeError, ValueError):
            raise OptionError(f"--obs-wave {wave!r}: expected a wavelength in microns") from None
        out.append((f"{centre:g}um", centre, f"--obs-wave {wave}"))
    if not out:
        raise OptionError("give --line (with --z), --obs-wave or --continuum for the S/N map")
    lo, hi = float(np.nanmin(wavelength)), float(np.nanmax(wavelength))
    result = []
    for name, centre, option in out:
        if skip_outside and not lo <= centre <= hi:
            continue
        result.append((name, centre, line_window(wavelength, centre, width_kms, option=option)))
    return result


def line_snr_map(sci, err, wavelength, *, lines=None, z=None, obs_wave=None,
                 width_kms=750.0, air=False, excluded=None,
                 combine: Literal["sum", "max"] = "sum"):
    """S/N map of one or several line windows.

    Parameters
    ----------
    sci, err : ndarray, shape (nw, ny, nx)
    wavelength : ndarray, shape (nw,)
        Microns.
    lines, z, obs_wave, width_kms, air :
        See :func:`line_windows`.
    excluded : ndarray of bool, shape (nw, ny, nx), optional
        True for voxels without usable data (NaN SCI is excluded in any case).
    combine : {"sum", "max"}, optional
        With several lines: ``"sum"`` collapses all windows together (one S/N of
        the summed light); ``"max"`` takes, spaxel by spaxel, the highest S/N of
        the single-line maps, so a region that only one line traces still stands
        out at that line's S/N. Default ``"sum"``.

    Returns
    -------
    SNRMap
    """
    if combine not in ("sum", "max"):
        raise OptionError(f"combine {combine!r}: expected 'sum' or 'max'")
    windows = line_windows(wavelength, lines=lines, z=z, obs_wave=obs_wave,
                           width_kms=width_kms, air=air)
    planes = np.unique(np.concatenate([w[2] for w in windows]))
    signal, noise, n_used = collapsed_sums(sci, err, planes, excluded=excluded)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(n_used > 0, signal / noise, np.nan)
    if combine == "max" and len(windows) > 1:
        maps = []
        for _, _, p in windows:
            s, nz, n = collapsed_sums(sci, err, p, excluded=excluded)
            with np.errstate(invalid="ignore", divide="ignore"):
                maps.append(np.where(n > 0, s / nz, -np.inf))
        best = np.max(maps, axis=0)
        snr = np.where(n_used > 0, best, np.nan)
    robust = robust_snr(sci, err, planes, excluded=excluded)
    result = SNRMap(snr=snr, signal=signal, noise=noise, n_used=n_used, planes=planes,
                    kind="line", windows=[(n, c) for n, c, _ in windows],
                    width_kms=float(width_kms), z=z, robust=robust)
    log.info("%s", result.describe())
    return result


def continuum_snr_map(sci, err, wavelength, *, z=None, mask_lines=None, mask_obs_wave=None,
                      width_kms=1500.0, air=False, excluded=None):
    """S/N map of the whole cube collapsed, with the windows of known lines masked.

    Parameters
    ----------
    sci, err : ndarray, shape (nw, ny, nx)
    wavelength : ndarray
        Microns.
    z : float, optional
        Redshift; with it, the windows of every line in :data:`layerclip.lines.LINES`
        that falls inside the cube (or of ``mask_lines``) are left out.
    mask_lines : sequence, optional
        Lines to mask instead of all known lines (needs ``z``).
    mask_obs_wave : sequence of float, optional
        Further observed wavelengths (microns) to mask.
    width_kms : float, optional
        Full width of each masked window (default 1500 km/s, wider than a line
        window so line wings stay out).
    air : bool, optional
    excluded : ndarray of bool, optional

    Returns
    -------
    SNRMap
    """
    nw = sci.shape[0]
    lines = list(LINES) if (mask_lines is None and z is not None) else _as_list(mask_lines)
    if lines and z is None:
        raise OptionError("--continuum with lines to mask needs --z")
    windows = []
    if lines or mask_obs_wave is not None:
        windows = line_windows(wavelength, lines=lines or None, z=z, obs_wave=mask_obs_wave,
                               width_kms=width_kms, air=air, skip_outside=True)
    keep = np.ones(nw, dtype=bool)
    for _, _, p in windows:
        keep[p] = False
    planes = np.flatnonzero(keep)
    if planes.size == 0:
        raise WavelengthError("--continuum: every plane lies inside a masked line window; "
                              "narrow --width or mask fewer lines")
    signal, noise, n_used = collapsed_sums(sci, err, planes, excluded=excluded)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(n_used > 0, signal / noise, np.nan)
    result = SNRMap(snr=snr, signal=signal, noise=noise, n_used=n_used, planes=planes,
                    kind="continuum", windows=[(n, c) for n, c, _ in windows],
                    width_kms=float(width_kms), z=z, robust=None)
    log.info("%s", result.describe())
    return result
