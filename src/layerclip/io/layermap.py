"""Layer maps on disk: a 2-D integer FITS image with the cube's celestial WCS.

Values: ``-1`` excluded (outside the field of view, or ignored), ``0`` sky,
``1..N`` target layers in order of increasing S/N.
"""

from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import InputFileError, LayerMapError
from ..layers import validate_layer_map
from .output import atomic_writeto

__all__ = ["read_layer_map", "write_layer_map", "layer_map_hdu"]


def layer_map_hdu(layer_map, *, celestial_wcs=None, snr_edges=None, name="LAYERS",
                  primary=False, history=()):
    """Build the FITS HDU of a layer map.

    Parameters
    ----------
    layer_map : ndarray of int, shape (ny, nx)
    celestial_wcs : `~astropy.wcs.WCS`, optional
        The cube's 2-D celestial WCS, written into the header.
    snr_edges : sequence of float, optional
        S/N edges of the layers (N+1 values), recorded as ``SNRLOi``/``SNRHIi``.
    name : str
        EXTNAME.
    primary : bool
        Return a PrimaryHDU (for a stand-alone file) instead of an ImageHDU.
    history : iterable of str
        HISTORY cards to add.
    """
    header = fits.Header()
    if celestial_wcs is not None:
        header.update(celestial_wcs.to_header())
    n_layers = int(layer_map.max()) if layer_map.size else 0
    header["NLAYERS"] = (max(n_layers, 0), "number of target S/N layers")
    header["LAYDEF"] = ("-1 excluded, 0 sky, 1..N target layers", "layer map values")
    if snr_edges is not None:
        for i, (lo, hi) in enumerate(zip(snr_edges[:-1], snr_edges[1:], strict=True), 1):
            header[f"SNRLO{i}"] = (float(lo), f"lowest S/N of layer {i}")
            header[f"SNRHI{i}"] = (float(hi), f"S/N upper edge of layer {i} (exclusive)")
    for card in history:
        header.add_history(card)
    data = np.asarray(layer_map, dtype=np.int16)
    cls = fits.PrimaryHDU if primary else fits.ImageHDU
    hdu = cls(data=data, header=header)
    if not primary:
        hdu.name = name
    return hdu


def write_layer_map(path, layer_map, *, celestial_wcs=None, snr_edges=None, history=(),
                    overwrite=False):
    """Write a layer map as a stand-alone FITS file (atomically)."""
    hdu = layer_map_hdu(layer_map, celestial_wcs=celestial_wcs, snr_edges=snr_edges,
                        primary=True, history=history)
    atomic_writeto(fits.HDUList([hdu]), path, overwrite=overwrite)
    return Path(path)


def read_layer_map(path, shape=None):
    """Read a layer map written by :func:`write_layer_map` (or any 2-D integer image).

    Parameters
    ----------
    path : str or Path
        FITS file; the first HDU with 2-D data (or the ``LAYERS`` extension of a
        cleaned cube) is used.
    shape : tuple of int, optional
        Expected (ny, nx), checked when given.

    Returns
    -------
    ndarray of int16
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"--layers {path}: no such file")
    try:
        with fits.open(path, memmap=False) as hdul:
            candidates = [h for h in hdul if h.name == "LAYERS"] or list(hdul)
            data = None
            for hdu in candidates:
                if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.data is not None:
                    data = np.array(hdu.data)
                    break
    except OSError as exc:
        raise InputFileError(f"--layers {path}: not a readable FITS file ({exc})") from None
    if data is None:
        raise LayerMapError(f"--layers {path}: no image data, expected a 2-D layer map")
    return validate_layer_map(data, shape, source=f"--layers {path}")
