"""Signal-to-noise maps collapsed from a cube (array-level)."""

import warnings

import numpy as np

__all__ = ["collapsed_snr", "collapsed_sums", "robust_snr"]


def _usable(sci, err, planes, excluded):
    s = np.asarray(sci[planes], dtype=float)
    e = np.asarray(err[planes], dtype=float)
    bad = ~np.isfinite(s) | ~np.isfinite(e) | (e <= 0)
    if excluded is not None:
        bad |= np.asarray(excluded[planes], dtype=bool)
    return s, e, bad


def collapsed_sums(sci, err, planes, *, excluded=None, block_planes=256):
    """Summed SCI, quadrature-summed ERR and plane count over ``planes``.

    Works through ``planes`` in blocks of ``block_planes`` so that collapsing a
    whole cube (continuum S/N) never copies it at once.

    Parameters
    ----------
    sci, err : ndarray, shape (nw, ny, nx)
    planes : array of int
        Plane indices to collapse.
    excluded : ndarray of bool, optional
        True where a voxel holds no usable data. NaN SCI, and ERR that is NaN or
        not positive, are excluded in any case.
    block_planes : int, optional
        Planes read per step (memory bound only; results do not depend on it
        beyond floating-point summation order).

    Returns
    -------
    signal, noise : ndarray of float, shape (ny, nx)
        ``sum(SCI)`` and ``sqrt(sum(ERR**2))`` over the usable voxels.
    n_used : ndarray of int, shape (ny, nx)
    """
    planes = np.asarray(planes, dtype=int).ravel()
    shape = sci.shape[1:]
    signal = np.zeros(shape)
    var = np.zeros(shape)
    n_used = np.zeros(shape, dtype=int)
    for start in range(0, max(planes.size, 1), int(block_planes)):
        chunk = planes[start:start + int(block_planes)]
        if chunk.size == 0:
            break
        s, e, bad = _usable(sci, err, chunk, excluded)
        signal += np.where(bad, 0.0, s).sum(axis=0)
        var += np.where(bad, 0.0, e * e).sum(axis=0)
        n_used += (~bad).sum(axis=0)
    return signal, np.sqrt(var), n_used


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
    signal, noise, n_used = collapsed_sums(sci, err, planes, excluded=excluded)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(n_used > 0, signal / noise, np.nan)
    return snr, n_used


def _neighbour_median(cube):
    """Median of the 8 spatial neighbours of every voxel of a (n, ny, nx) cube (NaN-aware)."""
    pad = np.pad(cube, ((0, 0), (1, 1), (1, 1)), constant_values=np.nan)
    ny, nx = cube.shape[1:]
    stack = np.stack([pad[:, 1 + dy:1 + dy + ny, 1 + dx:1 + dx + nx]
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods give NaN
        return np.nanmedian(stack, axis=0)


def robust_snr(sci, err, planes, *, excluded=None, n_drop=3):
    """An S/N map that artifacts in a few of the summed planes cannot inflate.

    Each spaxel's spectrum ``s`` over ``planes`` is compared with the median
    spectrum ``m`` of its 8 neighbours. The ratio ``sum(s) / sum(m)`` is taken
    once over all planes and once without the ``n_drop`` planes where the
    spaxel departs most from its neighbours, up or down (cosmic-ray residuals
    span 1-3 planes);
    the map is the S/N the spaxel would have if its whole spectrum were the
    second ratio times its neighbours' (``ratio * sum(m) / noise``). Real signal
    follows its neighbours' line profile, so both ratios agree and the map equals
    the summed S/N; an artifact moves only the first ratio, and the map returns
    to the S/N the spaxel's line really has. Where a ratio cannot be formed
    (neighbours without signal) the summed S/N is kept.

    Parameters
    ----------
    sci, err : ndarray, shape (nw, ny, nx)
    planes : array of int
    excluded : ndarray of bool, optional
    n_drop : int, optional
        Planes left out per spaxel (default 3).

    Returns
    -------
    ndarray of float, shape (ny, nx)
    """
    s, e, bad = _usable(sci, err, np.asarray(planes, dtype=int), excluded)
    s = np.where(bad, np.nan, s)
    noise = np.sqrt(np.where(bad, 0.0, e * e).sum(axis=0))
    n_used = (~bad).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(n_used > 0, np.nansum(s, axis=0) / noise, np.nan)
    n_drop = int(n_drop)
    if s.shape[0] <= n_drop + 1:
        return snr
    m = _neighbour_median(s)
    ok = np.isfinite(s) & np.isfinite(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Positive and negative residuals alike: artifacts can be either sign.
        excess = np.where(ok, np.abs(s - m) / np.where(bad, 1.0, e), -np.inf)
    worst = np.argpartition(-excess, n_drop - 1, axis=0)[:n_drop]
    keep = ok.copy()
    np.put_along_axis(keep, worst, False, axis=0)
    s0, m0 = np.where(ok, s, 0.0), np.where(ok, m, 0.0)
    m_all = m0.sum(axis=0)
    m_keep = np.where(keep, m0, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dropped = np.where(keep, s0, 0.0).sum(axis=0) / m_keep
        # The S/N the spaxel has if its whole spectrum is `dropped` times its
        # neighbours': equal to the summed S/N when the spectrum follows them.
        robust = dropped * m_all / noise
        usable = (m_all > 0) & (m_keep > 0) & np.isfinite(robust)
    return np.where(usable, robust, snr)
