"""File-level shell of the mask toolkit: cube in, layer map + S/N map + figure out.

Reads what the array-level steps need from a :class:`~layerclip.io.Cube` (and
its WMAP extension when edge lifting asks for it), runs
:func:`~layerclip.masks.build.build_mask`, and writes, into an output folder,
``<cube name>_layers.fits``, ``<cube name>_snr.fits`` and
``<cube name>_mask.png``.
"""

import logging
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import OutputError
from ..io.layermap import write_layer_map
from ..io.output import atomic_writeto, check_output_path
from .build import build_mask
from .snrmaps import continuum_snr_map, line_snr_map

__all__ = ["snr_map_for_cube", "read_wmap", "mask_cube", "write_mask_products",
           "product_paths"]

log = logging.getLogger(__name__)


def snr_map_for_cube(cube, spec):
    """The :class:`~layerclip.masks.SNRMap` a :class:`~layerclip.masks.MaskSpec` asks for."""
    excluded = cube.excluded
    if spec.continuum:
        return continuum_snr_map(cube.sci, cube.err, cube.wavelength, z=spec.z,
                                 width_kms=spec.continuum_width_kms, air=cube.air,
                                 excluded=excluded)
    return line_snr_map(cube.sci, cube.err, cube.wavelength, lines=spec.lines, z=spec.z,
                        obs_wave=spec.obs_wave, width_kms=spec.width_kms, air=cube.air,
                        excluded=excluded, combine=spec.combine)


def read_wmap(path, planes=None):
    """Mean of the WMAP extension over ``planes`` (None if the file has no WMAP)."""
    if path is None:
        return None
    with fits.open(path, memmap=True) as hdul:
        if "WMAP" not in hdul:
            return None
        data = hdul["WMAP"].data
        if data is None:
            return None
        if data.ndim == 2:
            return np.array(data, dtype=float)
        sel = data if planes is None else data[np.asarray(planes)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN spaxels
            return np.nanmean(np.asarray(sel, dtype=float), axis=0)


def _needs_wmap(spec):
    return any(e.get("op") == "lift_edges" and e.get("use_wmap", True) for e in spec.edits)


def mask_cube(cube, spec, *, wmap=None):
    """Build the target mask and layers of a cube.

    Parameters
    ----------
    cube : Cube
    spec : MaskSpec
    wmap : ndarray, optional
        Collapsed weight map; read from the cube's file when edge lifting uses it.

    Returns
    -------
    MaskResult
    """
    spec.check()
    snrmap = snr_map_for_cube(cube, spec)
    if wmap is None and _needs_wmap(spec):
        wmap = read_wmap(cube.path, snrmap.planes)
    no_data = cube.excluded.all(axis=0)
    return build_mask(snrmap, spec, no_data=no_data, celestial_wcs=cube.celestial_wcs,
                      wmap=wmap)


def product_paths(cube_name, out_dir):
    """Paths of the layer map, S/N map and figure written for ``cube_name``."""
    stem = Path(str(cube_name))
    while stem.suffix.lower() in (".fits", ".fit", ".fz", ".gz"):
        stem = stem.with_suffix("")
    out = Path(out_dir)
    return {"layers": out / f"{stem.name}_layers.fits", "snr": out / f"{stem.name}_snr.fits",
            "figure": out / f"{stem.name}_mask.png"}


def write_mask_products(result, cube, out_dir, *, overwrite=False, figure=True, title=None):
    """Write the layer map, the S/N map and (optionally) the figure.

    Returns
    -------
    dict
        ``{"layers": Path, "snr": Path, "figure": Path or None}``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir}: is a file, expected a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = product_paths(cube.name, out_dir)
    for key in ("layers", "snr") + (("figure",) if figure else ()):
        check_output_path(paths[key], inputs=[cube.path], overwrite=overwrite, option="--out")
    wcs = cube.celestial_wcs
    history = result.history()
    write_layer_map(paths["layers"], result.layer_map, celestial_wcs=wcs,
                    snr_edges=result.edges, history=history, overwrite=overwrite)
    header = fits.Header()
    if wcs is not None:
        header.update(wcs.to_header())
    header["BUNIT"] = ("", "signal-to-noise ratio")
    header["NPLANES"] = (int(result.snrmap.planes.size), "planes collapsed")
    for card in history[:1]:
        header.add_history(card)
    hdus = [fits.PrimaryHDU(result.snrmap.snr.astype(np.float32), header=header),
            fits.ImageHDU(result.snrmap.n_used.astype(np.int32), name="NUSED"),
            fits.ImageHDU(result.initial.astype(np.uint8), name="INITIAL"),
            fits.ImageHDU(result.target.astype(np.uint8), name="TARGET")]
    if result.snrmap.robust is not None:
        hdus.append(fits.ImageHDU(result.snrmap.robust.astype(np.float32), name="ROBUST"))
    atomic_writeto(fits.HDUList(hdus), paths["snr"], overwrite=overwrite)
    paths["figure"] = None if not figure else paths["figure"]
    if figure:
        from ..plotting.masks import plot_mask

        fig = plot_mask(result, title=title or cube.name)
        tmp = paths["figure"]
        if tmp.exists() and overwrite:
            tmp.unlink()
        fig.savefig(tmp, dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values() if p))
    return paths
