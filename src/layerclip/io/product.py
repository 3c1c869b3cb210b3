"""Reading a cleaned product: the cube, its CLIPPED flags, LAYERS map and provenance."""

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import CubeFormatError, InputFileError
from ..layers import validate_layer_map
from .cube import Cube, read_cube

__all__ = ["CleanedProduct", "read_product", "parse_history"]

_KEY_VALUE = re.compile(r"([A-Za-z_][A-Za-z_0-9]*)=(\S+)")


@dataclass
class CleanedProduct:
    """A cube written by ``layerclip clean`` (or any cube, with what it carries).

    Attributes
    ----------
    cube : Cube
        The cleaned cube.
    flags : ndarray of bool or None
        True where layerclip replaced a voxel (the ``CLIPPED`` extension).
    layer_map : ndarray of int16 or None
        The ``LAYERS`` extension (-1 excluded, 0 sky, 1..N layers).
    snr_edges : ndarray or None
        S/N edges of the layers, from the LAYERS header (SNRLOi/SNRHIi).
    history : list of str
        ``layerclip`` HISTORY lines of the SCI header, in order.
    params : dict
        What the HISTORY says: ``input``, ``method``, ``sigma``, ``maxiters``,
        ``line``, ``z``, ``centre_um``, ``width_kms``, ``replaced`` ... (strings and
        numbers as found; absent keys are simply missing).
    path : Path
    """

    cube: Cube
    flags: np.ndarray | None
    layer_map: np.ndarray | None
    snr_edges: np.ndarray | None = None
    history: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def is_layerclip(self):
        return self.flags is not None and self.layer_map is not None


def _number(text):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if re.fullmatch(r"[-+]?\d+", text) else value


def parse_history(lines):
    """Parameters recorded by :func:`layerclip.pipeline.provenance` in HISTORY lines.

    Parameters
    ----------
    lines : iterable of str
        HISTORY lines starting with ``layerclip``.

    Returns
    -------
    dict
    """
    params = {}
    for line in lines:
        body = line[len("layerclip"):].strip()
        if body.startswith(tuple("0123456789")) and ": cleaned " in body:
            version, _, name = body.partition(": cleaned ")
            params["version"] = version.strip()
            params["input"] = name.strip()
            continue
        if body.startswith("S/N map:"):
            match = re.search(r"line=(.+?) z=(\S+)", body)
            if match:
                params["line"] = match.group(1)
                params["z"] = _number(match.group(2))
            for key in ("centre", "width", "planes"):
                found = re.search(rf"{key}=(\S+)", body)
                if found:
                    raw = found.group(1)
                    if key == "centre":
                        params["centre_um"] = _number(raw.removesuffix("um"))
                    elif key == "width":
                        params["width_kms"] = _number(raw.removesuffix("km/s"))
                    else:
                        params["snr_planes"] = raw
            continue
        if body.startswith("replaced voxels:"):
            for key, value in _KEY_VALUE.findall(body):
                params[f"replaced_{key}"] = _number(value)
            continue
        if body.startswith("layers:"):
            params["layers"] = body.partition(":")[2].strip()
            continue
        if body.startswith("layer S/N edges:"):
            continue
        for key, value in _KEY_VALUE.findall(body):
            params.setdefault(key, _number(value))
    return params


def _extension(hdul, name):
    for hdu in hdul:
        if hdu.name.upper() == name and hdu.data is not None:
            return hdu
    return None


def layerclip_history(header):
    """The ``layerclip`` HISTORY lines, re-joined where FITS split them over cards."""
    lines = []
    joining = False
    for card in header.get("HISTORY", []):
        text = str(card)
        if text.startswith("layerclip"):
            lines.append(text)
            joining = len(text) >= 72
        elif joining and lines:
            # NOTE: astropy cuts long HISTORY text at 72 characters without a separator.
            lines[-1] += text
            joining = len(text) >= 72
        else:
            joining = False
    return lines


def read_product(path, *, cube=None):
    """Read a cleaned cube with its CLIPPED flags, LAYERS map and HISTORY provenance.

    Parameters
    ----------
    path : str or Path
        A file written by ``layerclip clean`` (any cube file is accepted: the flags
        and layer map are then None).
    cube : Cube, optional
        The cube already read (otherwise :func:`layerclip.io.read_cube` reads it).

    Returns
    -------
    CleanedProduct
    """
    path = Path(path)
    if cube is None:
        cube = read_cube(path)
    flags = layer_map = edges = None
    try:
        with fits.open(path, memmap=False) as hdul:
            clipped = _extension(hdul, "CLIPPED")
            layers = _extension(hdul, "LAYERS")
            if clipped is not None:
                flags = np.asarray(clipped.data) != 0
                if flags.shape != cube.shape:
                    raise CubeFormatError(f"{path}[CLIPPED]: shape {flags.shape} differs "
                                          f"from the cube's {cube.shape}")
            if layers is not None:
                layer_map = validate_layer_map(np.asarray(layers.data), cube.shape[1:],
                                               source=f"{path}[LAYERS]")
                lo = [layers.header.get(f"SNRLO{i}") for i in range(1, 1000)]
                n = next((i for i, v in enumerate(lo) if v is None), 0)
                if n:
                    edges = np.array([*lo[:n], layers.header[f"SNRHI{n}"]], dtype=float)
    except OSError as exc:
        raise InputFileError(f"{path}: not a readable FITS file ({exc})") from None
    history = layerclip_history(cube.header)
    return CleanedProduct(cube=cube, flags=flags, layer_map=layer_map, snr_edges=edges,
                          history=history, params=parse_history(history), path=path)
