"""Paper mode: the layered sigma clipping of Hutchison et al. (2024), vectorised.

Per wavelength plane, the sky spaxels (layer 0) form one group and every target
layer another; each group is sigma-clipped on its own with astropy's
``sigma_clip`` semantics (median centre, population-std scale, strict bounds,
stop when a pass clips nothing or after ``maxiters``), and flagged voxels are
replaced by the group's nanmedian, taken over the group's usable values *before*
replacement (outliers included), as the released notebooks do. ERR of flagged
voxels gets the nanmedian ERR of the group.

Instead of one ``sigma_clip`` call per plane and group, the group's spaxels are
gathered into a (planes, spaxels) block and clipped with a single call along
axis 1, which gives the same masks.
"""

import warnings

import numpy as np
from astropy.stats import sigma_clip
from astropy.utils.exceptions import AstropyUserWarning

__all__ = ["clip_block_paper"]


def _nanmedian_rows(block):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        return np.nanmedian(block, axis=1)


def clip_block_paper(sci, err, excluded, groups, *, sigma=5.0, maxiters=5):
    """Paper-mode clipping of a block of planes, in place.

    Parameters
    ----------
    sci, err : ndarray, shape (n_planes, n_spaxels)
        Flux and uncertainty with the spatial axes flattened; modified in place.
    excluded : ndarray of bool, shape (n_planes, n_spaxels)
        True for voxels with no usable data (NaN, DO_NOT_USE); never flagged and
        not part of any statistic.
    groups : list of ndarray of int
        Spaxel indices (into the flattened axis) of each group to clip separately.
    sigma : float
        Clipping threshold in standard deviations (both sides).
    maxiters : int or None
        Most clipping passes (None: until convergence).

    Returns
    -------
    flags : ndarray of bool, shape (n_planes, n_spaxels)
        True where a voxel was replaced.
    """
    flags = np.zeros(sci.shape, dtype=bool)
    for cols in groups:
        if cols.size == 0:
            continue
        block = sci[:, cols].astype(sci.dtype, copy=True)
        bad = excluded[:, cols] | ~np.isfinite(block)
        block[bad] = np.nan
        with warnings.catch_warnings():
            # NaNs stand for excluded voxels here; sigma_clip masks them itself.
            warnings.simplefilter("ignore", AstropyUserWarning)
            clipped = sigma_clip(block, sigma=sigma, maxiters=maxiters, cenfunc="median",
                                 stdfunc="std", axis=1, masked=True, copy=False)
        hit = np.ma.getmaskarray(clipped) & ~bad
        if not hit.any():
            continue
        rows = np.flatnonzero(hit.any(axis=1))
        median = _nanmedian_rows(block[rows])
        eblock = err[:, cols][rows].astype(err.dtype, copy=True)
        eblock[bad[rows] | ~np.isfinite(eblock)] = np.nan
        emedian = _nanmedian_rows(eblock)
        sub = hit[rows]
        r, c = np.nonzero(sub)
        sci[rows[r], cols[c]] = median[r]
        err[rows[r], cols[c]] = emedian[r]
        flags[rows[r], cols[c]] = True
    return flags
