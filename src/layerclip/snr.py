"""Signal-to-noise maps collapsed from a cube (array-level)."""

import numpy as np

__all__ = ["collapsed_snr"]


def collapsed_snr(sci, err, planes, *, excluded=None):
    """S/N map of the sum over ``planes``: summed SCI over sqrt of summed ERR^2.

    Parameters
    ----------
    sci, err : ndarray, shape (nw, ny, nx)
    planes : array of int
        Plane indices to collapse.
    excluded : ndarray of bool, optional
        True where a voxel holds no usable data. NaN SCI, and ERR that is NaN or
        not positive, are excluded in any case.

    Returns
    -------
    snr : ndarray of float, shape (ny, nx)
        NaN where a spaxel has no usable voxel in ``planes``.
    n_used : ndarray of int, shape (ny, nx)
        Number of planes that contributed to each spaxel.
    """
    planes = np.asarray(planes)
    s = np.asarray(sci[planes], dtype=float)
    e = np.asarray(err[planes], dtype=float)
    bad = ~np.isfinite(s) | ~np.isfinite(e) | (e <= 0)
    if excluded is not None:
        bad |= np.asarray(excluded[planes], dtype=bool)
    s = np.where(bad, 0.0, s)
    e = np.where(bad, 0.0, e)
    n_used = (~bad).sum(axis=0)
    signal = s.sum(axis=0)
    noise = np.sqrt((e * e).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(n_used > 0, signal / noise, np.nan)
    return snr, n_used
