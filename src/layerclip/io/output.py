"""Writing cleaned cubes: a copy of the input in which only what cleaning changed differs."""

import os
import re
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import OutputError
from .cube import OUTLIER, native

__all__ = ["atomic_writeto", "check_output_path", "write_cleaned"]

_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|PC\d_\d|CD\d_\d|PS\d_\d|PV\d_\d"
    r"|RADESYS|EQUINOX|SPECSYS|LONPOLE|LATPOLE)$"
)


def check_output_path(output, *, inputs=(), overwrite=False, option="-o"):
    """Refuse an output path that is an input, exists (without overwrite) or cannot be written."""
    output = Path(output)
    for item in inputs:
        if item is not None and Path(item).exists() and (
            output.exists() and os.path.samefile(output, item)
            or output.resolve() == Path(item).resolve()
        ):
            raise OutputError(f"{option} {output}: is the input file; choose another output path")
    if output.exists() and not overwrite:
        raise OutputError(f"{option} {output}: already exists (use --overwrite to replace it)")
    if output.is_dir():
        raise OutputError(f"{option} {output}: is a folder, expected a file path")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{option} {output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{option} {output}: folder {folder} is not writable")
    return output


def atomic_writeto(hdul, path, *, overwrite=False):
    """Write ``hdul`` to ``path`` through a temporary file in the same folder.

    The file appears under its name only once complete; on any error (or
    Ctrl-C) the temporary file is removed and an existing ``path`` is untouched.
    """
    path = Path(path)
    check_output_path(path, overwrite=overwrite)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _wcs_cards(header):
    out = fits.Header()
    for card in header.cards:
        if _WCS_KEY.match(card.keyword):
            out.append(card)
    return out


def write_cleaned(input_path, output_path, result, *, layer_hdu, history=(),
                  sci="SCI", err="ERR", dq="DQ", overwrite=False):
    """Write the cleaned copy of a JWST-layout cube.

    Only the SCI and ERR values of replaced voxels change, DQ gains the OUTLIER
    bit on them, HISTORY cards are added to the SCI header, and two extensions are
    appended: ``CLIPPED`` (uint8, 1 where a voxel was replaced) and ``LAYERS``.
    Every other HDU is passed through as read.

    Parameters
    ----------
    input_path, output_path : str or Path
    result : ClipResult
        From :func:`layerclip.clip_cube` on the cube read from ``input_path``.
    layer_hdu : `~astropy.io.fits.ImageHDU`
        The ``LAYERS`` extension, from :func:`layerclip.io.layermap.layer_map_hdu`.
    history : iterable of str
        Provenance lines for the SCI header.
    overwrite : bool
        Replace an existing output.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    check_output_path(output_path, inputs=[input_path], overwrite=overwrite)
    flags = result.flags
    with fits.open(input_path, memmap=False) as hdul:
        names = [h.name.upper() for h in hdul]
        for ext in ("CLIPPED", "LAYERS"):
            if ext in names:
                raise OutputError(
                    f"{input_path}: already has a {ext} extension; it looks like a layerclip "
                    "output, clean the original cube instead"
                )
        for ext, new in ((sci, result.sci), (err, result.err)):
            hdu = hdul[ext]
            data = native(hdu.data).copy()
            data[flags] = new[flags].astype(data.dtype)
            hdu.data = data
        if dq.upper() in names:
            hdu = hdul[dq]
            data = native(hdu.data).astype(np.uint32)
            data[flags] |= np.uint32(OUTLIER)
            hdu.data = data
        sci_header = hdul[sci].header
        for line in history:
            sci_header.add_history(line)
        for ext in (sci, err, dq):
            if ext.upper() in names and "CHECKSUM" in hdul[ext].header:
                hdul[ext].add_checksum()
        clipped = fits.ImageHDU(data=flags.astype(np.uint8), header=_wcs_cards(sci_header),
                                name="CLIPPED")
        clipped.header["BUNIT"] = ("", "1 where layerclip replaced the voxel")
        out = fits.HDUList([*hdul, clipped, layer_hdu])
        atomic_writeto(out, output_path, overwrite=overwrite)
    return output_path
