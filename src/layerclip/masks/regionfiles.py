"""DS9 and CASA (CRTF) region files turned into spaxel masks (uses the ``regions`` package).

A spaxel is inside a region when its centre is (``regions`` mode ``"center"``),
so a region selects whole spaxels, never fractions. Pixel regions in a file use
the file's convention (DS9 ``image`` coordinates start at 1; the ``regions``
package converts them to zero-based pixels); sky regions (``fk5``, ``icrs`` ...)
are projected with the cube's celestial WCS. Inside one file, DS9 exclude
regions (a leading ``-``) are carved out of the union of the include regions.
"""

import logging
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputFileError, LayerclipWarning, OptionError

__all__ = ["read_regions", "regions_mask"]

log = logging.getLogger(__name__)

_FORMATS = {".reg": "ds9", ".ds9": "ds9", ".crtf": "crtf", ".crt": "crtf"}


def read_regions(path, *, option="region file"):
    """Read a DS9 or CRTF region file into a list of ``regions`` objects.

    The format is taken from the suffix (``.reg``/``.ds9`` DS9, ``.crtf``/``.crt``
    CRTF); other suffixes are tried as DS9, then CRTF.
    """
    from regions import Regions

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{option} {path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{option} {path}: is a folder, expected a region file")
    formats = [_FORMATS[path.suffix.lower()]] if path.suffix.lower() in _FORMATS else [
        "ds9", "crtf"]
    errors = []
    for fmt in formats:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # unparsable lines must not pass silently
                regs = Regions.read(str(path), format=fmt)
        except Exception as exc:  # regions raises several types for malformed files
            errors.append(f"{fmt}: {exc}")
            continue
        if len(regs) == 0:
            raise InputFileError(f"{option} {path}: no region found in the file")
        return list(regs)
    raise InputFileError(f"{option} {path}: not a readable DS9/CRTF region file "
                         f"({'; '.join(errors)})")


def _is_sky(region):
    return hasattr(region, "to_pixel") and not hasattr(region, "to_sky")


def regions_mask(regions, shape, *, wcs=None, option="region file"):
    """Spaxels inside a set of regions: union of include regions minus exclude regions.

    Parameters
    ----------
    regions : str, Path or list of region objects
        A region file, or regions already read.
    shape : tuple of int
        (ny, nx) of the image.
    wcs : `~astropy.wcs.WCS`, optional
        The cube's 2-D celestial WCS; needed for sky regions.
    option : str
        Name used in messages.

    Returns
    -------
    ndarray of bool
        True for spaxels whose centre is inside.
    """
    if isinstance(regions, (str, Path)):
        regions_path = regions
        regions = read_regions(regions, option=option)
        option = f"{option} {regions_path}"
    include = np.zeros(shape, dtype=bool)
    exclude = np.zeros(shape, dtype=bool)
    for region in regions:
        if _is_sky(region):
            if wcs is None:
                raise OptionError(f"{option}: holds sky regions ({type(region).__name__}) "
                                  "but the cube has no celestial WCS; use pixel regions")
            region = region.to_pixel(wcs)
        try:
            rmask = region.to_mask(mode="center").to_image(shape)
        except Exception as exc:
            raise OptionError(f"{option}: region {type(region).__name__} cannot be turned "
                              f"into a spaxel mask ({exc})") from None
        inside = np.zeros(shape, dtype=bool) if rmask is None else rmask.astype(bool)
        if region.meta.get("include", 1) in (0, False):
            exclude |= inside
        else:
            include |= inside
    mask = include & ~exclude
    if not mask.any():
        warnings.warn(f"{option}: no spaxel centre lies inside the regions",
                      LayerclipWarning, stacklevel=2)
    log.info("%s: %d spaxels inside", option, int(mask.sum()))
    return mask
