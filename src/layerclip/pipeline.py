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
from .io import read_layer_map, write_cleaned
from .io.cube import warn_bad_uncertainty
from .io.layermap import layer_map_hdu
from .io.output import dq_bits_for

__all__ = ["LayerMapInfo", "automatic_layer_map", "clean_file"]

log = logging.getLogger(__name__)

# Cubes whose flux + uncertainty exceed this many bytes are cleaned out of core (the
# in-memory path needs about 40 bytes per voxel at its peak).
STREAM_BYTES = 256 * 2**20


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
    mask: object | None = None  # layerclip.masks.MaskResult, when built here

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
        if self.mask is not None:
            lines += self.mask.history()
        return lines


#: Edits the automatic layer map applies unless told otherwise: none. Lifting
#: field-edge spaxels (``{"op": "lift_edges"}``) protects edge signal but, measured
#: on the synthetic arc in paper mode, puts noisier spaxels into quieter layers and
#: raises false flags by ~20%; recipes turn it on per target. Artifact-inflated
#: spaxels are handled before the layers are cut (``rank="robust"``).
AUTO_EDITS = ()


def automatic_layer_map(cube, *, line=None, z=None, obs_wave=None, width_kms=750.0,
                        threshold=3.0, n_layers="auto", min_island=4, sigma=5.0, no_data=None,
                        continuum=False, statistic="std", edits=AUTO_EDITS, spec=None):
    """Build a layer map from a line-window (or continuum) S/N map of ``cube``.

    Give either ``line`` (name or rest wavelength in Angstrom, or a list of them)
    with ``z``, ``obs_wave`` (observed wavelength, microns), or ``continuum=True``.
    ``no_data`` (bool (ny, nx), True for spaxels without usable data anywhere)
    defaults to what ``cube`` shows; the streaming path (:mod:`layerclip.stream`)
    passes it for a cube of the window planes only.

    The layers follow the automatic rule of :func:`layerclip.masks.choose_edges`
    (3-4 layers, each large enough for a ``sigma`` clip with ``statistic`` to flag
    a single outlier) on the S/N with artifact-inflated spaxels ranked by their
    neighbours' S/N, then ``edits`` are applied (default :data:`AUTO_EDITS`).
    A full :class:`layerclip.masks.MaskSpec` given as ``spec`` replaces all the
    other settings (recipes use this).
    """
    from .masks import MaskSpec, build_mask, snr_map_for_cube

    if spec is None:
        if continuum:
            if line is not None or obs_wave is not None:
                raise OptionError("give --continuum or --line/--obs-wave, not both")
        elif (line is None) == (obs_wave is None):
            raise OptionError("give either --line (with --z), --obs-wave or --continuum to "
                              "build the target mask, or --layers FILE")
        lines = None if line is None else ([line] if isinstance(line, (str, int, float))
                                           else list(line))
        spec = MaskSpec(lines=lines, z=z, obs_wave=obs_wave, continuum=continuum,
                        width_kms=width_kms, threshold=threshold, min_island=min_island,
                        n_layers=n_layers, sigma=sigma, statistic=statistic,
                        rank="robust", edits=[dict(e) for e in edits])
    snrmap = snr_map_for_cube(cube, spec)
    if no_data is None:
        no_data = cube.excluded.all(axis=0)
    mask = build_mask(snrmap, spec, no_data=no_data, celestial_wcs=cube.celestial_wcs)
    layer_map, edges = mask.layer_map, mask.edges
    name, centre = (snrmap.windows[0] if snrmap.windows and snrmap.kind == "line"
                    else (None, None))
    log.info("%s; %d target spaxels in %d layers", snrmap.describe(),
             int((layer_map > 0).sum()), len(edges) - 1)
    return LayerMapInfo(layer_map=layer_map, source="automatic", snr=snrmap.snr, edges=edges,
                        planes=snrmap.planes, line=name if spec.lines else None, z=spec.z,
                        centre_um=centre,
                        params={"width_kms": spec.width_kms, "threshold": spec.threshold,
                                "n_layers": spec.n_layers, "min_island": spec.min_island},
                        mask=mask)


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


def clean_file(input_path, output_path, *, method="robust", sigma=5.0, maxiters=5,
               layers=None, line=None, z=None, obs_wave=None, width_kms=750.0,
               threshold=3.0, n_layers="auto", overwrite=False, read_options=None,
               block_planes=None, primary_cards=None, continuum=False, replace=None,
               grow=None, err_factor=None):
    """Clean one cube file (any layout :mod:`layerclip.io.formats` reads) and write it.

    The output keeps the input's layout. Cubes larger than ``STREAM_BYTES``, or any
    cube when ``block_planes`` is given, are cleaned out of core
    (:mod:`layerclip.stream`), with the same result.

    Parameters
    ----------
    input_path, output_path : str or Path
    method : str
        Clipping method (see :func:`layerclip.clip_cube`).
    sigma, maxiters : float, int
        Clipping parameters.
    replace : {"model", "median", "interp", "nan"}, optional
        Replacement of flagged voxels (default: the method's, see
        :func:`layerclip.clip_cube`); ``"nan"`` also sets DQ DO_NOT_USE.
    grow : int, optional
        Robust mode: growing steps (default 2).
    err_factor : float, optional
        Robust mode: ERR is multiplied by this (default: measured on the cube, 1
        unless ERR understates the noise by more than 5%; see
        :func:`layerclip.clip_cube`).
    layers : str or Path, optional
        A layer-map FITS file; otherwise one is built from the line window given by
        ``line``/``z`` or ``obs_wave``.
    line, z, obs_wave, width_kms, threshold, n_layers :
        Settings of the automatic layer map (see :func:`automatic_layer_map`).
    continuum : bool
        Build the automatic layer map from the continuum (whole cube with known
        line windows masked) instead of a line window; in-memory cubes only.
    overwrite : bool
        Replace an existing output.
    read_options : dict, optional
        Layout overrides for :func:`layerclip.io.read_cube` (``format``, ``sci``,
        ``err``, ``var``, ``dq``, ``err_file``, ``var_file``, ``dq_file``).
    block_planes : int, optional
        Clean out of core in blocks of this many planes.
    primary_cards : dict, optional
        ``{KEY: (value, comment)}`` for the output's primary header.

    Returns
    -------
    (ClipResult or StreamResult, LayerMapInfo)
    """
    from .io.formats import open_cube
    from .io.output import check_free_space, check_output_path

    check_output_path(output_path, inputs=[input_path], overwrite=overwrite)
    source = open_cube(input_path, **(read_options or {}))
    # Refuse before any work when the output cannot fit (a copy of the input files
    # plus the one-byte-per-voxel CLIPPED log).
    check_free_space(Path(output_path).parent,
                     sum(Path(f).stat().st_size for f in source.layout.files)
                     + int(np.prod(source.shape)))
    if block_planes is not None or source.nbytes > STREAM_BYTES:
        from .stream import clean_source

        if continuum and layers is None:
            raise OptionError("--continuum cannot build the layer map of a cube cleaned out "
                              "of core; run `layerclip mask --continuum` and pass --layers")

        extra = {k: v for k, v in (("replace", replace), ("grow", grow),
                                   ("err_factor", err_factor)) if v is not None}
        done = clean_source(source, output_path, method=method, sigma=sigma,
                            maxiters=maxiters, layers=layers, line=line, z=z,
                            obs_wave=obs_wave, width_kms=width_kms, threshold=threshold,
                            n_layers=n_layers, overwrite=overwrite,
                            block_planes=block_planes, primary_cards=primary_cards, **extra)
        warn_bad_uncertainty(source.n_bad_err, source.name)
        return done
    cube = source.to_cube()
    warn_bad_uncertainty(source.n_bad_err, source.name)
    if layers is not None:
        info = LayerMapInfo(layer_map=read_layer_map(layers, cube.shape[1:]),
                            source=f"file {Path(layers).name}")
    else:
        info = automatic_layer_map(cube, line=line, z=z, obs_wave=obs_wave,
                                   width_kms=width_kms, threshold=threshold,
                                   n_layers=n_layers, sigma=sigma, continuum=continuum)
    # cube.excluded includes the voxels the ERR policy excludes (CubeSource.read).
    excluded = cube.excluded
    result = clip_cube(cube.sci, cube.err, info.layer_map, method=method, sigma=sigma,
                       maxiters=maxiters, excluded=excluded, replace=replace, grow=grow,
                       err_factor=err_factor)
    hdu = layer_map_hdu(info.layer_map, celestial_wcs=cube.celestial_wcs,
                        snr_edges=info.edges, history=info.history())
    write_cleaned(input_path, output_path, result, layer_hdu=hdu,
                  history=provenance(result, info, Path(input_path).name),
                  overwrite=overwrite, source=source, primary_cards=primary_cards,
                  dq_bits=dq_bits_for(result.params.get("replace")))
    return result, info
