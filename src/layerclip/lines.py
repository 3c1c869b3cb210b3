"""Rest-frame vacuum wavelengths of common emission lines and line-window helpers."""

import re

import numpy as np

from .errors import OptionError, WavelengthError

__all__ = ["LINES", "rest_wavelength", "observed_wavelength", "line_window", "vacuum_to_air"]

C_KMS = 299_792.458

#: Rest-frame vacuum wavelengths in Angstrom, keyed by display name.
LINES = {
    "Lya": 1215.67,
    "[O II]3727": 3727.09,
    "[O II]3730": 3729.88,
    "Hb": 4862.68,
    "[O III]4960": 4960.30,
    "[O III]5008": 5008.24,
    "[N II]6550": 6549.86,
    "Ha": 6564.61,
    "[N II]6585": 6585.27,
    "[S II]6718": 6718.29,
    "[S II]6733": 6732.67,
    "[S III]9071": 9071.1,
    "[S III]9533": 9533.2,
    "HeI10833": 10833.3,
    "Pa-g": 10941.1,
    "Pa-b": 12821.6,
    "Pa-a": 18756.1,
    "Br-g": 21661.2,
}

_ALIASES = {
    "lyalpha": "Lya",
    "hbeta": "Hb",
    "halpha": "Ha",
    "pagamma": "Pa-g",
    "pabeta": "Pa-b",
    "paalpha": "Pa-a",
    "brgamma": "Br-g",
    "he10833": "HeI10833",
}


def _normalise(name):
    return re.sub(r"[\s\[\]\-_]", "", name).lower()


_LOOKUP = {_normalise(k): k for k in LINES}
_LOOKUP.update({_normalise(k): v for k, v in _ALIASES.items()})


def rest_wavelength(line):
    """Rest-frame vacuum wavelength of a line, in Angstrom.

    Parameters
    ----------
    line : str or float
        A name from :data:`LINES` (case, spaces, brackets and hyphens are ignored,
        so ``"OIII5008"`` and ``"[O III]5008"`` are the same line), an alias such as
        ``"Halpha"``, or a number (a string or float) giving the wavelength in
        Angstrom.

    Returns
    -------
    (name, wavelength) : tuple of str and float
    """
    if isinstance(line, (int, float)):
        value = float(line)
        name = f"{value:g}A"
    else:
        key = _normalise(str(line))
        if key in _LOOKUP:
            name = _LOOKUP[key]
            return name, LINES[name]
        try:
            value = float(str(line).strip().rstrip("Aa"))
        except ValueError:
            known = ", ".join(LINES)
            raise OptionError(
                f"--line {line!r}: not a known line name ({known}) "
                "nor a rest wavelength in Angstrom"
            ) from None
        name = f"{value:g}A"
    if not np.isfinite(value) or value <= 0:
        raise OptionError(f"--line {line!r}: a rest wavelength must be a positive number")
    return name, value


def vacuum_to_air(wavelength_angstrom):
    """Convert vacuum to air wavelengths (Angstrom), IAU standard (Morton 2000)."""
    wave = np.asarray(wavelength_angstrom, dtype=float)
    s2 = (1e4 / wave) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    return wave / n


def observed_wavelength(line, z, *, air=False):
    """Observed wavelength in microns of ``line`` at redshift ``z``.

    ``air=True`` converts to air wavelengths, for cubes whose axis is AWAV.
    """
    name, rest = rest_wavelength(line)
    if z is None or not np.isfinite(z) or z <= -1:
        raise OptionError(f"--z {z!r}: a redshift greater than -1 is needed with --line")
    obs = rest * (1 + z)
    if air:
        obs = float(vacuum_to_air(obs))
    return name, obs * 1e-4


def line_window(wavelength_um, centre_um, width_kms=750.0, *, option="--obs-wave"):
    """Indices of the planes inside a velocity window around ``centre_um``.

    Parameters
    ----------
    wavelength_um : ndarray
        Wavelength of every plane, microns.
    centre_um : float
        Window centre, microns.
    width_kms : float, optional
        Full width of the window in km/s (default 750, the paper's 700-800).
    option : str, optional
        Name of the option that set the centre, for error messages.

    Returns
    -------
    ndarray of int
        Plane indices, at least one (the nearest plane when the window is narrower
        than a plane).
    """
    wave = np.asarray(wavelength_um, dtype=float)
    if not np.isfinite(width_kms) or width_kms <= 0:
        raise OptionError(f"--width {width_kms!r}: the window width must be positive (km/s)")
    lo, hi = np.nanmin(wave), np.nanmax(wave)
    if not (lo <= centre_um <= hi):
        raise WavelengthError(
            f"{option}: the line falls at {centre_um:.5f} um, outside the cube's "
            f"wavelength range {lo:.5f}-{hi:.5f} um"
        )
    half = centre_um * width_kms / 2 / C_KMS
    planes = np.flatnonzero(np.abs(wave - centre_um) <= half)
    if planes.size == 0:
        planes = np.array([int(np.nanargmin(np.abs(wave - centre_um)))])
    return planes
