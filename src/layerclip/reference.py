"""A plain slice-by-slice re-statement of the paper's notebooks, used as a yardstick.

This is deliberately the obvious, slow implementation: one ``sigma_clip`` call
per wavelength plane and group on the 2-D slice with everything outside the
group set to NaN, as the released notebooks do. Tests compare
:func:`layerclip.clip_cube` (``method="paper"``) against it voxel for voxel and
the speed benchmark times it. It does not reproduce the notebooks' defect of
reusing the previous slice's result for an all-NaN slice.
"""

import warnings

import numpy as np
from astropy.stats import sigma_clip
from astropy.utils.exceptions import AstropyUserWarning

__all__ = ["paper_loop"]


def paper_loop(sci, err, layer_map, *, sigma=5.0, maxiters=5, excluded=None):
    """Slice-by-slice paper-mode clipping; returns ``(sci, err, flags)``."""
    sci = np.asarray(sci)
    err = np.asarray(err)
    out_sci = sci.astype(sci.dtype.newbyteorder("="), copy=True)
    out_err = err.astype(err.dtype.newbyteorder("="), copy=True)
    flags = np.zeros(sci.shape, dtype=bool)
    group_ids = [g for g in np.unique(layer_map) if g >= 0]
    for k in range(sci.shape[0]):
        plane = out_sci[k].copy()
        eplane = out_err[k].copy()
        if excluded is not None:
            plane[excluded[k]] = np.nan
        if np.all(np.isnan(plane)):
            continue
        for g in group_ids:
            in_group = layer_map == g
            values = np.where(in_group, plane, np.nan)
            if np.all(np.isnan(values)):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyUserWarning)
                clipped = sigma_clip(values, sigma=sigma, maxiters=maxiters)
            hit = clipped.mask & np.isfinite(values)
            if not hit.any():
                continue
            errors = np.where(in_group & np.isfinite(values), eplane, np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(values)
                emedian = np.nanmedian(errors)
            out_sci[k][hit] = median
            out_err[k][hit] = emedian
            flags[k][hit] = True
    return out_sci, out_err, flags
