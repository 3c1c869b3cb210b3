"""File-level workflow: read a cube, build or read its layer map, clip, write.

This is the layer the command line calls; everything here is glue between
:mod:`layerclip.io` and the array-level algorithms.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .clip import ClipResult, clip_cube
from .errors import OptionError
from .io import read_cube, read_layer_map, write_cleaned
from .io.layermap import layer_map_hdu
from .layers import auto_layer_map
from .lines import line_window, observed_wavelength
from .snr import collapsed_snr

__all__ = ["LayerMapInfo", "automatic_layer_map", "clean_file"]

log = logging.getLogger(__name__)


@dataclass
class LayerMapInfo:
    """A layer map and how it was made."""

    layer_map: np.ndarray
    source: str
    snr: np.ndarray | None = None
    edges: np.ndarray | None = None
    planes: np.ndarray | None = None
    line: str | None = None
    z: float | None = None
    centre_um: float | None = None
    params: dict = field(default_factory=dict)

    def history(self):
        """Provenance lines describing the layer map."""
        lines = [f"layerclip layers: {self.source}"]
        if self.centre_um is not None:
            what = f"line={self.line} z={self.z:g}" if self.line else "obs-wave"
            lines.append(f"layerclip S/N map: {what} centre={self.centre_um:.6f}um "
                         f"planes={int(self.planes[0])}-{int(self.planes[-1])} "
                         f"width={self.params.get('width_kms'):g}km/s")
        if self.edges is not None:
            edges = ", ".join(f"{e:.4g}" for e in self.edges)
            lines.append(f"layerclip layer S/N edges: {edges} "
                         f"threshold={self.params.get('threshold'):g}")
        return lines


def automatic_layer_map(cube, *, line=None, z=None, obs_wave=None, width_kms=750.0,
                        threshold=3.0, n_layers=3, min_island=4, sigma=5.0):
    """Build a layer map from a line-window S/N map of ``cube``.

    Give either ``line`` (name or rest wavelength in Angstrom) with ``z``, or
    ``obs_wave`` (observed wavelength, microns).
    """
    if (line is None) == (obs_wave is None):
        raise OptionError("give either --line (with --z) or --obs-wave to build the "
                          "target mask, or --layers FILE")
    if line is not None:
        name, centre = observed_wavelength(line, z, air=cube.air)
        option = f"--line {line} --z {z}"
    else:
        name, centre = None, float(obs_wave)
        option = f"--obs-wave {obs_wave}"
    planes = line_window(cube.wavelength, centre, width_kms, option=option)
    excluded = cube.excluded
    snr, _ = collapsed_snr(cube.sci, cube.err, planes, excluded=excluded)
    no_data = excluded.all(axis=0)
    layer_map, edges = auto_layer_map(snr, threshold=threshold, n_layers=n_layers,
                                      min_island=min_island, sigma=sigma, no_data=no_data)
    log.info("S/N map from %d planes around %.5f um; %d target spaxels in %d layers",
             planes.size, centre, int((layer_map > 0).sum()), len(edges) - 1)
    return LayerMapInfo(layer_map=layer_map, source="automatic", snr=snr, edges=edges,
                        planes=planes, line=name, z=z, centre_um=centre,
                        params={"width_kms": width_kms, "threshold": threshold,
                                "n_layers": n_layers, "min_island": min_island})


def provenance(result: ClipResult, info: LayerMapInfo, input_name):
    """HISTORY lines for the SCI header: stable (no dates, no paths beyond the name)."""
    params = " ".join(f"{k}={v}" for k, v in sorted(result.params.items()))
    counts = " ".join(f"{'sky' if g == 0 else f'L{g}'}={n}"
                      for g, n in result.counts_per_group.items())
    return [
        f"layerclip {__version__}: cleaned {input_name}",
        f"layerclip method={result.method} {params}",
        *info.history(),
        f"layerclip replaced voxels: total={result.n_flagged} {counts}",
    ]


def clean_file(input_path, output_path, *, method="paper", sigma=5.0, maxiters=5,
               layers=None, line=None, z=None, obs_wave=None, width_kms=750.0,
               threshold=3.0, n_layers=3, overwrite=False):
    """Clean one JWST-layout cube file and write the result.

    Parameters
    ----------
    input_path, output_path : str or Path
    method : str
        Clipping method (see :func:`layerclip.clip_cube`).
    sigma, maxiters : float, int
        Clipping parameters.
    layers : str or Path, optional
        A layer-map FITS file; otherwise one is built from the line window given by
        ``line``/``z`` or ``obs_wave``.
    line, z, obs_wave, width_kms, threshold, n_layers :
        Settings of the automatic layer map.
    overwrite : bool
        Replace an existing output.

    Returns
    -------
    (ClipResult, LayerMapInfo)
    """
    from .io.output import check_output_path

    check_output_path(output_path, inputs=[input_path], overwrite=overwrite)
    cube = read_cube(input_path)
    if layers is not None:
        info = LayerMapInfo(layer_map=read_layer_map(layers, cube.shape[1:]),
                            source=f"file {Path(layers).name}")
    else:
        info = automatic_layer_map(cube, line=line, z=z, obs_wave=obs_wave,
                                   width_kms=width_kms, threshold=threshold,
                                   n_layers=n_layers, sigma=sigma)
    excluded = None if cube.dq is None else (cube.dq & 1) != 0
    result = clip_cube(cube.sci, cube.err, info.layer_map, method=method, sigma=sigma,
                       maxiters=maxiters, excluded=excluded)
    hdu = layer_map_hdu(info.layer_map, celestial_wcs=cube.celestial_wcs,
                        snr_edges=info.edges, history=info.history())
    write_cleaned(input_path, output_path, result, layer_hdu=hdu,
                  history=provenance(result, info, Path(input_path).name),
                  overwrite=overwrite)
    return result, info
