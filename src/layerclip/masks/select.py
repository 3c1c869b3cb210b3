"""Target selection on an S/N map: threshold, islands, components, spaxel lists, segmentation.

All functions are array-level and return boolean images where True means "in
the target" (a selection, not a flag). Positions are ``(x, y)`` zero-based
spaxel indices, as on the axes of the mask figures and as in ``image[y, x]``.
"""

import logging
import warnings

import numpy as np
from scipy import ndimage

from ..errors import EmptyTargetError, LayerclipWarning, OptionError
from ..layers import drop_small_islands

__all__ = ["threshold_mask", "drop_small_islands", "keep_touching", "spaxel_mask",
           "segment_target"]

log = logging.getLogger(__name__)

_EIGHT = np.ones((3, 3), dtype=bool)


def threshold_mask(snr, threshold=3.0, *, no_data=None):
    """Spaxels with S/N >= ``threshold`` (NaN and ``no_data`` spaxels never).

    Parameters
    ----------
    snr : ndarray, shape (ny, nx)
    threshold : float, optional
        Default 3, the paper's.
    no_data : ndarray of bool, optional
        True for spaxels without usable data.
    """
    snr = np.asarray(snr, dtype=float)
    if not np.isfinite(threshold):
        raise OptionError(f"--snr-threshold {threshold!r}: expected a number")
    with np.errstate(invalid="ignore"):
        mask = np.isfinite(snr) & (snr >= threshold)
    if no_data is not None:
        mask &= ~np.asarray(no_data, dtype=bool)
    return mask


def _positions(positions, shape, option):
    pos = np.asarray(positions, dtype=float)
    if pos.size == 0:
        return np.zeros((0, 2), dtype=int)
    if pos.ndim == 1:
        pos = pos[None]
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise OptionError(f"{option}: expected (x, y) pairs, found shape {np.shape(positions)}")
    if not np.all(np.isfinite(pos)) or np.any(pos != np.round(pos)):
        raise OptionError(f"{option}: spaxel positions must be whole numbers (x, y)")
    pos = pos.astype(int)
    ny, nx = shape
    outside = (pos[:, 0] < 0) | (pos[:, 0] >= nx) | (pos[:, 1] < 0) | (pos[:, 1] >= ny)
    if outside.any():
        x, y = pos[np.argmax(outside)]
        raise OptionError(f"{option}: spaxel (x={x}, y={y}) is outside the {nx} x {ny} "
                          "image (positions are zero-based x, y)")
    return pos


def spaxel_mask(spaxels, shape, *, option="spaxels"):
    """Boolean image that is True at the listed ``(x, y)`` spaxels.

    Parameters
    ----------
    spaxels : sequence of (x, y)
        Zero-based spaxel indices.
    shape : tuple of int
        (ny, nx).
    option : str
        Name used in error messages.
    """
    pos = _positions(spaxels, shape, option)
    mask = np.zeros(shape, dtype=bool)
    mask[pos[:, 1], pos[:, 0]] = True
    return mask


def keep_touching(mask, positions, *, option="keep_at"):
    """Keep only the 8-connected component(s) of ``mask`` containing ``positions``.

    Parameters
    ----------
    mask : ndarray of bool
    positions : sequence of (x, y)
        Zero-based spaxel indices; a position outside ``mask`` keeps nothing and
        is reported with a warning.

    Returns
    -------
    ndarray of bool
    """
    mask = np.asarray(mask, dtype=bool)
    pos = _positions(positions, mask.shape, option)
    labels, _ = ndimage.label(mask, structure=_EIGHT)
    hit = labels[pos[:, 1], pos[:, 0]]
    for (x, y), lab in zip(pos, hit, strict=True):
        if lab == 0:
            warnings.warn(f"{option}: spaxel (x={x}, y={y}) is not in the target mask; "
                          "it keeps no component", LayerclipWarning, stacklevel=2)
    keep = np.unique(hit[hit > 0])
    return np.isin(labels, keep) & mask


def segment_target(snr, mask, *, positions=None, reject=None, n_pixels=5, deblend=True,
                   n_levels=32, contrast=0.001, smooth=0.0):
    """Separate the target from neighbouring sources by image segmentation (photutils).

    The S/N map inside ``mask`` is segmented into connected sources
    (:func:`photutils.segmentation.detect_sources`) and, with ``deblend``, blended
    sources are split along saddles (:func:`~photutils.segmentation.deblend_sources`).
    The segments containing ``reject`` positions (neighbours) are removed; if
    ``positions`` are given, only the segments containing them are kept; with
    neither, the segment with the largest area is kept. Deblending splits a
    diffuse target at its noise peaks too, so naming the neighbours
    (``reject``) is the safer choice for extended targets.

    Parameters
    ----------
    snr : ndarray, shape (ny, nx)
    mask : ndarray of bool
        Candidate target spaxels (e.g. the thresholded map).
    positions : sequence of (x, y), optional
        Zero-based spaxels on the target.
    reject : sequence of (x, y), optional
        Zero-based spaxels on neighbouring sources to remove.
    n_pixels : int, optional
        Smallest source, in spaxels (default 5).
    deblend : bool, optional
        Split blended sources (default True).
    n_levels, contrast : optional
        Deblending settings (photutils defaults 32 and 0.001).
    smooth : float, optional
        Gaussian sigma (spaxels) the S/N map is smoothed with before deblending,
        to damp noise peaks (default 0, none).

    Returns
    -------
    keep : ndarray of bool
        The target's spaxels.
    segments : ndarray of int
        Segment label of every spaxel (0 outside every segment).
    """
    try:
        from photutils.segmentation import deblend_sources, detect_sources
    except ImportError:  # pragma: no cover - photutils is an optional extra
        raise OptionError("segmentation needs the photutils package "
                          "(pip install 'layerclip[masks]')") from None
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise EmptyTargetError("segmentation: the target mask is empty")
    data = np.where(mask, np.nan_to_num(np.asarray(snr, dtype=float)), 0.0)
    if smooth and smooth > 0:
        # Normalised smoothing inside the mask only, so the sky does not leak in.
        weight = ndimage.gaussian_filter(mask.astype(float), smooth, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            smoothed = ndimage.gaussian_filter(data, smooth, mode="constant") / weight
        data = np.where(mask, smoothed, 0.0)
    # Every masked spaxel is above threshold already: detect with a threshold just
    # above zero so the segments are exactly the mask's connected pieces.
    positive = data[mask]
    level = 0.5 * float(np.min(positive[positive > 0])) if np.any(positive > 0) else 0.0
    segm = detect_sources(data, level, n_pixels=int(n_pixels), connectivity=8)
    if segm is None:
        raise EmptyTargetError(f"segmentation: no source of at least {n_pixels} spaxels")
    if deblend:
        with warnings.catch_warnings():
            # photutils warns when a segment is too small or flat to deblend; that
            # is the expected outcome for single sources.
            warnings.filterwarnings("ignore", module=r"photutils\..*")
            try:
                segm = deblend_sources(data, segm, n_pixels=int(n_pixels),
                                       n_levels=int(n_levels), contrast=float(contrast),
                                       connectivity=8, progress_bar=False)
            except ImportError:  # pragma: no cover - photutils needs scikit-image here
                raise OptionError("deblending needs scikit-image (pip install "
                                  "'layerclip[masks]')") from None
    labels = np.asarray(segm.data, dtype=int)
    keep = mask.copy()
    if reject is not None and len(reject):
        pos = _positions(reject, mask.shape, "segmentation reject_at")
        hit = labels[pos[:, 1], pos[:, 0]]
        if not np.any(hit):
            raise EmptyTargetError("segmentation: none of the reject_at positions "
                                   f"{pos.tolist()} lies on a detected segment")
        keep &= ~np.isin(labels, hit[hit > 0])
        if keep.sum() < 0.5 * mask.sum():
            warnings.warn(f"segmentation: removing the segment(s) at {pos.tolist()} leaves "
                          f"{int(keep.sum())} of {int(mask.sum())} target spaxels; the "
                          "neighbour may not be deblended from the target (lower "
                          "segmentation_contrast)", LayerclipWarning, stacklevel=2)
    if positions is not None and len(positions):
        pos = _positions(positions, mask.shape, "segmentation keep_at")
        hit = labels[pos[:, 1], pos[:, 0]]
        if not np.any(hit):
            raise EmptyTargetError("segmentation: none of the target positions "
                                   f"{pos.tolist()} lies on a detected segment")
        keep &= np.isin(labels, hit[hit > 0])
    elif reject is None or not len(reject):
        areas = np.bincount(labels.ravel())
        areas[0] = 0
        keep &= labels == int(np.argmax(areas))
    log.info("segmentation: %d segment(s), keeping %d spaxels", int(labels.max()),
             int(keep.sum()))
    return keep, labels
