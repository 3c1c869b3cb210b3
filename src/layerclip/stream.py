"""Out-of-core cleaning: cubes processed block of planes by block of planes.

A cube larger than memory is never held whole. The layer map is built from the
line-window planes only (plus a block-wise pass that finds spaxels with no data
anywhere); clipping then reads blocks of ``block_planes`` planes through
short-lived memory maps (:class:`~layerclip.io.formats.CubeSource`), padded with
:func:`~layerclip.clip.halo_planes` extra planes on each side for methods whose
result for one plane depends on its neighbours, keeps the block's own planes,
and hands them to a :class:`~layerclip.io.output.CleanedWriter`, which updates
the replaced voxels of a byte-for-byte copy of the input and appends the
``CLIPPED`` log. Peak memory is set by the block size, not by the cube; the
result is bit-identical to the in-memory path (:func:`layerclip.clip_cube` on
the whole cube), which the tests check.
"""

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from .clip import METHODS, clip_cube, cube_err_factor, halo_planes
from .errors import LayerclipWarning
from .io.cube import Cube
from .layers import EXCLUDED, validate_layer_map

__all__ = ["StreamResult", "clip_stream", "stream_no_data", "stream_layer_map",
           "window_cube", "auto_block_planes", "clean_source", "clipped_flags"]

log = logging.getLogger(__name__)


# Working memory per voxel of a block while it is clipped (benchmarks/bench_memory.py:
# peak traced allocations of clip_cube on a 2000 x 60 x 60 cube, about 17 bytes per
# voxel in paper mode and 50 in robust mode, whose screen and fits hold float64 flux,
# ERR and residual and float32 screen, prediction and variance); with a margin:
_BYTES_PER_VOXEL = {"paper": 40, "robust": 64}


def auto_block_planes(shape, *, memory_mb=256, method="paper", halo=0):
    """Planes per block so that one block's working arrays stay near ``memory_mb``.

    A block is read with ``halo`` extra planes on each side; the block keeps at
    least ``halo`` planes of its own so that re-reading the halo does not dominate
    the run time (for robust mode on very wide planes this, not ``memory_mb``,
    sets the memory use).
    """
    per_voxel = _BYTES_PER_VOXEL.get(method, 500)
    per_plane = max(int(np.prod(shape[1:])), 1) * per_voxel
    planes = (memory_mb * 2**20) // per_plane - 2 * int(halo)
    return int(max(1, int(halo), min(shape[0], planes)))


@dataclass
class StreamResult:
    """Outcome of :func:`clip_stream` (counts only; the cube itself went to disk).

    Attributes
    ----------
    shape : tuple
        (nw, ny, nx) of the cube.
    layer_map : ndarray of int16
    method : str
    params : dict
    per_spaxel : ndarray of int, shape (ny, nx)
        Replaced voxels per spaxel.
    flags : ndarray of bool or None
        The ``CLIPPED`` log read back through a memory map of the output (set by
        the pipeline once the output exists), shape (nw, ny, nx).
    """

    shape: tuple
    layer_map: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    per_spaxel: np.ndarray | None = None
    flags: np.ndarray | None = None

    @property
    def counts_per_group(self):
        """Replaced voxels per layer-map value: ``{0: sky, 1: layer 1, ...}``."""
        labels = self.layer_map.ravel()
        per = self.per_spaxel.ravel()
        return {int(g): int(per[labels == g].sum()) for g in np.unique(labels)
                if g != EXCLUDED}

    @property
    def n_flagged(self):
        return int(self.per_spaxel.sum())


def clip_stream(source, layer_map, *, writer=None, method=None, block_planes=None,
                **params):
    """Clip a cube on disk block of planes by block of planes.

    Parameters
    ----------
    source : `~layerclip.io.formats.CubeSource`
        The opened input cube.
    layer_map : ndarray of int, shape (ny, nx)
    writer : `~layerclip.io.output.CleanedWriter`, optional
        Receives every block's cleaned planes in order (nothing is written when None).
    method : str, optional
        Clipping method (see :func:`layerclip.clip_cube`; default: its default).
    block_planes : int, optional
        Planes per block (default: :func:`auto_block_planes`). Results do not
        depend on it.
    **params
        Method parameters passed to :func:`layerclip.clip_cube` (``sigma``,
        ``maxiters``, ...). In robust mode ``err_factor``, unless given, is
        measured once on the whole cube (:func:`layerclip.clip.cube_err_factor`,
        reading its sample windows of planes) and given to every block.

    Returns
    -------
    StreamResult
    """
    nw, ny, nx = source.shape
    if method is None:
        method = METHODS[0]
    halo = int(halo_planes(method, **params))
    if block_planes is None:
        block_planes = auto_block_planes(source.shape, method=method, halo=halo)
    block_planes = int(block_planes)
    if method == "robust" and params.get("err_factor") is None:
        params = {**params, "err_factor": cube_err_factor(
            lambda planes, cols: _read_planes(source, planes, cols, block_planes), nw,
            validate_layer_map(layer_map, (ny, nx)))}
    per_spaxel = np.zeros((ny, nx), dtype=np.int64)
    result_params, used_map = None, None
    for block, own in source.blocks(block_planes, halo=halo):
        # block.excluded holds NaN flux, the format's no-data voxels and those the ERR
        # policy excludes (CubeSource.read), as the in-memory path's cube.excluded.
        result = clip_cube(block.sci, block.err, layer_map, method=method,
                           excluded=block.excluded, **params)
        flags = result.flags[own]
        per_spaxel += flags.sum(axis=0)
        if writer is not None:
            writer.update(block.start + own.start, flags, result.sci[own], result.err[own])
        result_params, used_map = result.params, result.layer_map
        log.debug("%s: planes %d-%d, %d replaced", source.name, block.start + own.start,
                  block.start + own.stop - 1, int(flags.sum()))
        # (the block and its result are let go before the next block is read)
        del block, result, flags
    return StreamResult(shape=source.shape, layer_map=used_map, method=method,
                        params=result_params or {}, per_spaxel=per_spaxel)


def _read_planes(source, planes, cols, block_planes):
    """SCI, ERR and the excluded voxels of ``source`` at the planes ``planes`` (an
    int array) and flat spaxel indices ``cols``, each of shape (planes.size,
    cols.size). Only those planes are read: each run of consecutive ones once, in
    blocks of at most ``block_planes``."""
    wanted = np.unique(planes)
    rows = {}
    for run in np.split(wanted, np.flatnonzero(np.diff(wanted) > 1) + 1):
        for start in range(int(run[0]), int(run[-1]) + 1, block_planes):
            stop = min(start + block_planes, int(run[-1]) + 1)
            block = source.read(start, stop)
            arrays = [a.reshape(stop - start, -1)[:, cols]
                      for a in (block.sci, block.err, block.excluded)]
            for i in range(stop - start):
                rows[start + i] = [a[i] for a in arrays]
    return tuple(np.stack([rows[int(k)][j] for k in planes]) for j in range(3))


def stream_no_data(source, *, block_planes=None):
    """Spaxels without a single usable voxel in the whole cube, found block by block.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True where every voxel is NaN or marked as no data.
    """
    if block_planes is None:
        block_planes = auto_block_planes(source.shape)
    no_data = np.ones(source.shape[1:], dtype=bool)
    for block, own in source.blocks(block_planes):
        no_data &= block.excluded[own].all(axis=0)
    return no_data


def window_cube(source, planes):
    """A :class:`~layerclip.io.cube.Cube` of the planes around ``planes`` only.

    The planes ``min(planes) - 1 .. max(planes) + 1`` are read (one plane of
    margin, so that a line window computed on the sub-cube's wavelengths selects
    the same planes), with their wavelengths.

    Returns
    -------
    cube : Cube
    first : int
        Index in the whole cube of the sub-cube's first plane.
    """
    nw = source.shape[0]
    lo, hi = max(int(np.min(planes)) - 1, 0), min(int(np.max(planes)) + 2, nw)
    block = source.read(lo, hi)
    nodata = block.nodata
    if block.dq is not None:
        nodata = nodata & ((block.dq & 1) == 0)
    cube = Cube(sci=block.sci, err=block.err, dq=block.dq,
                wavelength=source.wavelength[lo:hi], header=source.header, wcs=source.wcs,
                air=source.air, path=source.path, layout=source.layout,
                nodata=nodata if nodata.any() else None)
    return cube, lo


def stream_layer_map(source, *, line=None, z=None, obs_wave=None, width_kms=750.0,
                     block_planes=None, **options):
    """The automatic layer map of :func:`layerclip.pipeline.automatic_layer_map`, streamed.

    Only the planes spanned by the line windows are read at once; the spaxels
    with no data are found in a block-wise pass (:func:`stream_no_data`). The
    result equals the in-memory layer map of the whole cube. The continuum S/N
    map needs every plane and is not available here.

    Returns
    -------
    `~layerclip.pipeline.LayerMapInfo`
    """
    from .errors import OptionError
    from .masks.snrmaps import line_windows
    from .pipeline import automatic_layer_map

    if options.get("continuum"):
        raise OptionError("--continuum cannot build the layer map of a cube cleaned out of "
                          "core; run `layerclip mask --continuum` and pass --layers")
    if (line is None) == (obs_wave is None):
        raise OptionError("give either --line (with --z) or --obs-wave to build the "
                          "target mask, or --layers FILE")
    lines = None if line is None else ([line] if isinstance(line, (str, int, float))
                                       else list(line))
    windows = line_windows(source.wavelength, lines=lines, z=z, obs_wave=obs_wave,
                           width_kms=width_kms, air=source.air)
    planes = np.unique(np.concatenate([w[2] for w in windows]))
    sub, first = window_cube(source, planes)
    no_data = stream_no_data(source, block_planes=block_planes)
    info = automatic_layer_map(sub, line=line, z=z, obs_wave=obs_wave, width_kms=width_kms,
                               no_data=no_data, **options)
    # Plane numbers of the whole cube, not of the sub-cube.
    if info.planes is not None:
        info.planes = np.asarray(info.planes) + first
    return info


def clean_source(source, output_path, *, method=None, sigma=5.0, maxiters=5, layers=None,
                 line=None, z=None, obs_wave=None, width_kms=750.0, threshold=3.0,
                 n_layers="auto", overwrite=False, block_planes=None, primary_cards=None,
                 **params):
    """Clean an opened cube out of core and write it in its own layout.

    The file-level workflow of :func:`layerclip.pipeline.clean_file` for cubes
    that do not fit in memory; the same options, plus ``block_planes``.

    Returns
    -------
    (StreamResult, LayerMapInfo)
    """
    from pathlib import Path

    from .io.layermap import layer_map_hdu, read_layer_map
    from .io.output import CleanedWriter
    from .pipeline import LayerMapInfo, provenance

    if method is None:
        method = METHODS[0]
    halo = halo_planes(method, **params)  # refuses an unknown method before any copying
    if block_planes is None:
        block_planes = auto_block_planes(source.shape, method=method, halo=halo)
    need_gb = (int(block_planes) + 2 * halo) * int(np.prod(source.shape[1:])) \
        * _BYTES_PER_VOXEL.get(method, 500) / 2**30
    if need_gb > 1:
        warnings.warn(
            f"--method {method} on {source.shape[1]} x {source.shape[2]} planes needs about "
            f"{need_gb:.1f} GB of working memory per block of {block_planes} planes "
            f"(+{2 * halo} halo); --method paper needs far less",
            LayerclipWarning, stacklevel=2)
    if layers is not None:
        info = LayerMapInfo(layer_map=read_layer_map(layers, source.shape[1:]),
                            source=f"file {Path(layers).name}")
    else:
        info = stream_layer_map(source, line=line, z=z, obs_wave=obs_wave,
                                width_kms=width_kms, threshold=threshold, n_layers=n_layers,
                                sigma=sigma, block_planes=block_planes)
    from .io.output import dq_bits_for

    with CleanedWriter(source, output_path, primary_cards=primary_cards,
                       dq_bits=dq_bits_for(params.get("replace")),
                       overwrite=overwrite) as writer:
        result = clip_stream(source, info.layer_map, writer=writer, method=method,
                             block_planes=block_planes, sigma=sigma, maxiters=maxiters,
                             **params)
        hdu = layer_map_hdu(info.layer_map, celestial_wcs=source.celestial_wcs,
                            snr_edges=info.edges, history=info.history())
        writer.finish(hdu, history=provenance(result, info, source.name))
    result.flags = clipped_flags(output_path)
    return result, info


def clipped_flags(path):
    """The ``CLIPPED`` log of a cleaned file as a read-only memory-mapped bool array."""
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        hdu = hdul["CLIPPED"]
        shape = tuple(hdu.header[f"NAXIS{i}"] for i in range(hdu.header["NAXIS"], 0, -1))
        offset = hdu.fileinfo()["datLoc"]
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape).view(bool)
