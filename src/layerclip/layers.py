"""Layer maps: target mask and S/N layers in one 2-D integer image (array-level).

Convention: ``-1`` excluded (outside the field of view, or ignored), ``0`` sky,
``1..N`` target layers in order of increasing S/N.
"""

import math
import warnings

import numpy as np
from scipy import ndimage

from .errors import EmptyTargetError, LayerclipWarning, LayerMapError, OptionError

__all__ = [
    "EXCLUDED",
    "SKY",
    "validate_layer_map",
    "STATISTICS",
    "min_clippable_size",
    "max_single_outlier_sigma",
    "drop_small_islands",
    "split_layers",
    "auto_layer_map",
]

EXCLUDED = -1
SKY = 0


def validate_layer_map(layer_map, shape=None, *, source="layer map"):
    """Check a layer map and return it as an int16 array.

    Parameters
    ----------
    layer_map : array_like
        2-D image of integer values >= -1.
    shape : tuple of int, optional
        Expected (ny, nx).
    source : str
        How to name the map in error messages (a file or option).
    """
    data = np.asarray(layer_map)
    if data.ndim != 2:
        raise LayerMapError(f"{source}: expected a 2-D image, found shape {data.shape}")
    if shape is not None and tuple(data.shape) != tuple(shape):
        raise LayerMapError(
            f"{source}: shape {data.shape} does not match the cube's spatial shape {tuple(shape)}"
        )
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise LayerMapError(f"{source}: values must be whole numbers (-1, 0, 1..N)")
    elif data.dtype.kind not in "iu":
        raise LayerMapError(f"{source}: expected integer values, found {data.dtype}")
    if data.size and (data.min() < EXCLUDED or data.max() > 1000):
        raise LayerMapError(
            f"{source}: values must be -1 (excluded), 0 (sky) or 1..N (layers); "
            f"found {data.min()}..{data.max()}"
        )
    return data.astype(np.int16)


#: Scale statistics the group-size bound knows (see :func:`max_single_outlier_sigma`).
STATISTICS = ("std", "std-mean", "std-ddof1", "mad")


def max_single_outlier_sigma(n, statistic="std"):
    """Largest distance, in units of the clip's scale, one outlier among ``n`` values can reach.

    Take ``n - 1`` equal values and one outlier at distance ``d``. The outlier
    inflates the scale estimate itself, so its distance in units of that scale is
    bounded whatever ``d`` is:

    - ``"std"`` (median centre, population std; the paper and astropy's
      ``sigma_clip`` defaults): ``n / sqrt(n - 1)``;
    - ``"std-mean"`` (mean centre, population std): ``sqrt(n - 1)``;
    - ``"std-ddof1"`` (median centre, sample std): ``sqrt(n)``;
    - ``"mad"`` (median centre, MAD-based scale): unbounded for ``n >= 3``, since
      neither the median nor the MAD moves with one outlier.

    A clip at ``sigma`` can never flag a lone outlier in a group whose bound is
    ``<= sigma``.

    Parameters
    ----------
    n : int or array_like
        Group size(s).
    statistic : {"std", "std-mean", "std-ddof1", "mad"}, optional
        Centre and scale of the clip (default ``"std"``).

    Returns
    -------
    ndarray of float
        The bound (``inf`` for robust scales, 0 for ``n <= 1``).
    """
    n = np.asarray(n, dtype=float)
    m1 = np.maximum(n - 1, 1)
    if statistic == "std":
        bound = n / np.sqrt(m1)
    elif statistic == "std-mean":
        bound = np.sqrt(m1)
    elif statistic == "std-ddof1":
        bound = np.sqrt(np.maximum(n, 1))
    elif statistic == "mad":
        bound = np.where(n >= 3, np.inf, 0.0)
    else:
        raise OptionError(f"statistic {statistic!r}: expected one of {', '.join(STATISTICS)}")
    return np.where(n > 1, bound, 0.0)


def min_clippable_size(sigma, statistic="std"):
    """Smallest group size in which a ``sigma`` clip can flag a single outlier.

    Computed from :func:`max_single_outlier_sigma`: the smallest ``n`` whose bound
    exceeds ``sigma`` (24 for the paper's 5-sigma std clip, 3 for a MAD scale).

    Parameters
    ----------
    sigma : float
        Clipping threshold.
    statistic : {"std", "std-mean", "std-ddof1", "mad"}, optional
        Centre and scale of the clip (default ``"std"``, the paper's).

    Returns
    -------
    int
    """
    if not np.isfinite(sigma) or sigma <= 0:
        raise OptionError(f"--sigma {sigma!r}: expected a positive number")
    if statistic not in STATISTICS:
        raise OptionError(f"statistic {statistic!r}: expected one of {', '.join(STATISTICS)}")
    if statistic == "mad":
        return 3
    # Start below the root of the closed form and step up: exact for every statistic.
    if statistic == "std":
        disc = sigma**4 - 4 * sigma**2
        start = 2 if disc < 0 else math.floor((sigma**2 + math.sqrt(disc)) / 2)
    elif statistic == "std-mean":
        start = math.floor(sigma**2)
    else:
        start = math.floor(sigma**2) - 1
    n = max(2, start - 1)
    while max_single_outlier_sigma(n, statistic) <= sigma:
        n += 1
    return n


def drop_small_islands(mask, min_size):
    """Remove 8-connected islands of fewer than ``min_size`` True pixels from ``mask``."""
    if min_size <= 1 or not mask.any():
        return mask.copy()
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def split_layers(snr_values, n_layers, *, min_size=1):
    """S/N edges splitting target spaxels into layers of (nearly) equal counts.

    Parameters
    ----------
    snr_values : ndarray
        S/N of the target spaxels.
    n_layers : int
        Layers wanted; fewer are made when there are not ``min_size`` spaxels
        for each.
    min_size : int
        Smallest number of spaxels a layer may hold.

    Returns
    -------
    edges : ndarray of float
        ``n + 1`` increasing edges; layer ``i`` holds ``edges[i-1] <= S/N < edges[i]``,
        the last edge being above the maximum.
    """
    values = np.sort(np.asarray(snr_values, dtype=float))
    n_target = values.size
    n = max(1, min(int(n_layers), n_target // max(int(min_size), 1)))
    if n < n_layers:
        warnings.warn(
            f"{n_target} target spaxels allow only {n} layer(s) of at least {min_size} "
            f"spaxels (asked for {n_layers})",
            LayerclipWarning,
            stacklevel=2,
        )
    cuts = [values[(n_target * i) // n] for i in range(1, n)]
    top = values[-1] + max(1.0, abs(values[-1]) * 1e-6)
    edges = np.array([values[0], *cuts, top])
    # Ties can make equal edges; drop them so no layer is empty by construction.
    return np.unique(edges)


def auto_layer_map(snr, *, threshold=3.0, n_layers=3, min_island=4, sigma=5.0,
                   no_data=None):
    """A first automatic layer map from an S/N map.

    Spaxels with S/N >= ``threshold`` form the target; 8-connected islands smaller
    than ``min_island`` are dropped; the rest are split into up to ``n_layers``
    layers of equal counts, each at least as large as a std-scaled ``sigma`` clip
    needs to flag a single outlier (:func:`min_clippable_size`).

    Parameters
    ----------
    snr : ndarray, shape (ny, nx)
        S/N map; NaN where there is no data.
    threshold : float
        Target threshold (the paper's 3).
    n_layers : int
        Layers wanted.
    min_island : int
        Smallest island kept in the target.
    sigma : float
        Clipping threshold the layers are sized for.
    no_data : ndarray of bool, optional
        True for spaxels with no usable data anywhere in the cube; they become -1.

    Returns
    -------
    layer_map : ndarray of int16
    edges : ndarray of float
        S/N edges of the layers (see :func:`split_layers`).
    """
    snr = np.asarray(snr, dtype=float)
    excluded = ~np.isfinite(snr)
    if no_data is not None:
        excluded |= no_data
    with np.errstate(invalid="ignore"):
        target = (snr >= threshold) & ~excluded
    target = drop_small_islands(target, min_island)
    if not target.any():
        finite = snr[~excluded]
        peak = f"{np.max(finite):.2f}" if finite.size else "n/a"
        raise EmptyTargetError(
            f"no spaxel has S/N >= {threshold:g} (peak S/N {peak}); "
            "check the line, redshift and window, or lower --snr-threshold"
        )
    edges = split_layers(snr[target], n_layers, min_size=min_clippable_size(sigma))
    layer_map = np.zeros(snr.shape, dtype=np.int16)
    layer_map[target] = np.clip(np.searchsorted(edges, snr[target], side="right"), 1,
                                len(edges) - 1)
    layer_map[excluded] = EXCLUDED
    return layer_map, edges
