"""The array-level entry point: :func:`clip_cube` and its result."""

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import CubeFormatError, OptionError
from .layers import EXCLUDED, validate_layer_map
from .paper import clip_block_paper

__all__ = ["ClipResult", "clip_cube", "halo_planes", "METHODS"]

METHODS = ("paper",)


@dataclass
class ClipResult:
    """Outcome of :func:`clip_cube`.

    Attributes
    ----------
    sci, err : ndarray
        Cleaned cubes (same dtype and shape as the input, native byte order).
    flags : ndarray of bool
        True where a voxel was replaced.
    layer_map : ndarray of int16
        The layer map used.
    method : str
    params : dict
        Parameters of the method, for provenance.
    """

    sci: np.ndarray
    err: np.ndarray
    flags: np.ndarray
    layer_map: np.ndarray
    method: str
    params: dict = field(default_factory=dict)

    @property
    def counts_per_group(self):
        """Replaced voxels per layer-map value: ``{0: sky, 1: layer 1, ...}``."""
        per_spaxel = self.flags.sum(axis=0)
        labels = self.layer_map.ravel()
        out = {}
        for g in np.unique(labels):
            if g == EXCLUDED:
                continue
            out[int(g)] = int(per_spaxel.ravel()[labels == g].sum())
        return out

    @property
    def n_flagged(self):
        return int(self.flags.sum())


def halo_planes(method="paper", **params):
    """Planes on each side a block needs so that block-wise clipping equals whole-cube clipping.

    The result of a method for one plane may depend only on planes within this
    distance; out-of-core processing reads blocks of planes with this many extra
    planes on each side and keeps only the block's own planes. Paper mode works on
    each plane alone, so its halo is 0.
    """
    if method == "paper":
        return 0
    raise OptionError(f"--method {method!r}: expected one of {', '.join(METHODS)}")


def _as_float_cube(array, name):
    array = np.asarray(array)
    if array.ndim != 3:
        raise CubeFormatError(f"{name}: expected a 3-D cube (wavelength, y, x), found shape "
                              f"{array.shape}")
    if array.dtype.kind != "f":
        raise CubeFormatError(f"{name}: expected floating-point data, found {array.dtype}")
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def clip_cube(sci, err, layer_map, *, method: Literal["paper"] = "paper", sigma=5.0,
              maxiters=5, excluded=None, block_planes=512):
    """Clip outliers from a cube group by group, plane by plane.

    Parameters
    ----------
    sci, err : ndarray, shape (nw, ny, nx)
        Flux and 1-sigma uncertainty (float32 or float64, any byte order).
    layer_map : ndarray of int, shape (ny, nx)
        ``-1`` excluded, ``0`` sky, ``1..N`` target layers.
    method : {"paper"}
        ``"paper"``: the released notebooks of Hutchison et al. (2024), exactly.
    sigma : float, optional
        Clipping threshold in standard deviations (default 5).
    maxiters : int or None, optional
        Most clipping passes per group and plane (default 5).
    excluded : ndarray of bool, optional
        True for voxels with no usable data (e.g. DQ DO_NOT_USE). NaN SCI values are
        excluded in any case. Excluded voxels are never flagged nor changed.
    block_planes : int, optional
        Planes processed per statistics call (memory bound; results do not depend
        on it).

    Returns
    -------
    ClipResult
    """
    sci = _as_float_cube(sci, "sci")
    err = _as_float_cube(err, "err")
    if sci.shape != err.shape:
        raise CubeFormatError(f"sci shape {sci.shape} and err shape {err.shape} differ")
    layer_map = validate_layer_map(layer_map, sci.shape[1:])
    if method not in METHODS:
        raise OptionError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise OptionError(f"--sigma {sigma!r}: expected a positive number")
    if maxiters is not None and (int(maxiters) != maxiters or maxiters < 1):
        raise OptionError(f"--maxiters {maxiters!r}: expected a positive whole number")
    if excluded is not None and np.shape(excluded) != sci.shape:
        raise CubeFormatError(f"excluded mask shape {np.shape(excluded)} differs from "
                              f"sci shape {sci.shape}")
    if int(block_planes) < 1:
        raise OptionError(f"block_planes {block_planes!r}: expected a positive whole number")

    nw, ny, nx = sci.shape
    labels = layer_map.ravel()
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels) if g != EXCLUDED]
    out_sci = sci.copy()
    out_err = err.copy()
    flags = np.zeros(sci.shape, dtype=bool)
    flat_sci = out_sci.reshape(nw, ny * nx)
    flat_err = out_err.reshape(nw, ny * nx)
    flat_flags = flags.reshape(nw, ny * nx)
    for start in range(0, nw, int(block_planes)):
        planes = slice(start, min(start + int(block_planes), nw))
        bad = ~np.isfinite(flat_sci[planes])
        if excluded is not None:
            bad |= np.asarray(excluded[planes], dtype=bool).reshape(bad.shape)
        block_sci = flat_sci[planes]
        block_err = flat_err[planes]
        flat_flags[planes] = clip_block_paper(block_sci, block_err, bad, groups,
                                              sigma=sigma, maxiters=maxiters)
    params = {"sigma": float(sigma), "maxiters": maxiters}
    return ClipResult(sci=out_sci, err=out_err, flags=flags, layer_map=layer_map,
                      method=method, params=params)
