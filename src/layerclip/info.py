"""What was done to a cleaned file: method, parameters, version, counts, restorability.

:func:`file_info` reads only headers, the ``LAYERS`` map, the ``CLIPPED`` log
(block of planes by block of planes, so memory stays small for any cube) and the
undo table's header; it never reads the cube itself.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CubeFormatError, LayerclipError
from .io.product import layerclip_history, parse_history
from .io.undo import HEADERS_EXTNAME, UNDO_EXTNAME, read_undo

__all__ = ["CleanedInfo", "file_info"]

_BLOCK_VOXELS = 2**24


@dataclass
class CleanedInfo:
    """Summary of a file written by ``layerclip clean``.

    Attributes
    ----------
    path : Path
    history : list of str
        The ``layerclip`` HISTORY lines of the flux header.
    params : dict
        Parsed from the HISTORY (``version``, ``input``, ``method``, ``sigma``,
        ``maxiters``, ``layers``, ``line``, ``z`` ... as recorded).
    shape : tuple or None
        (nw, ny, nx) of the ``CLIPPED`` log.
    groups : list of (int, int, int)
        ``(group, spaxels, replaced voxels)`` for the sky (0) and every layer.
    replaced : int or None
        Total replaced voxels (from ``CLIPPED``).
    restorable : bool
    restore_note : str
        Why (not) restorable.
    """

    path: Path
    history: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    shape: tuple | None = None
    groups: list = field(default_factory=list)
    replaced: int | None = None
    restorable: bool = False
    restore_note: str = ""

    def to_text(self):
        """A short human-readable report."""
        p = self.params
        rows = [f"{self.path}"]
        rows.append(f"  layerclip version  {p.get('version', 'unknown')}")
        if "input" in p:
            rows.append(f"  cleaned from       {p['input']}")
        settings = " ".join(f"{k}={p[k]}" for k in ("sigma", "maxiters") if k in p)
        rows.append(f"  method             {p.get('method', 'unknown')} {settings}".rstrip())
        if "err_factor" in p:
            rows.append(f"  ERR scaled by      {p['err_factor']} (measured: noise / ERR; 1: "
                        "ERR kept)")
        if "layers" in p:
            rows.append(f"  layers             {p['layers']}")
        if "line" in p:
            rows.append(f"  S/N map            line {p['line']} z={p.get('z')} "
                        f"centre {p.get('centre_um')} um, width {p.get('width_kms')} km/s")
        if self.shape is not None:
            rows.append(f"  cube               {self.shape[0]} planes x {self.shape[1]} x "
                        f"{self.shape[2]} spaxels")
        if self.groups:
            rows.append(f"  {'group':<10}{'spaxels':>9}{'replaced':>10}{'per plane':>11}")
            n_planes = self.shape[0] if self.shape else 1
            for g, spaxels, n in self.groups:
                name = "sky" if g == 0 else f"layer {g}"
                rows.append(f"  {name:<10}{spaxels:>9}{n:>10}{n / n_planes:>11.2f}")
        if self.replaced is not None:
            rows.append(f"  replaced voxels    {self.replaced}")
        elif "replaced_total" in p:
            rows.append(f"  replaced voxels    {p['replaced_total']} (from HISTORY)")
        rows.append(f"  restorable         {'yes' if self.restorable else 'no'}"
                    f" ({self.restore_note})")
        return "\n".join(rows)


def _index(hdul, name):
    for i, hdu in enumerate(hdul):
        if hdu.name.upper() == name:
            return i
    return None


def _flagged_per_spaxel(hdu):
    """Sum of the CLIPPED log over planes, block by block."""
    header = hdu.header
    if header.get("NAXIS") != 3:
        raise CubeFormatError(f"CLIPPED: expected a 3-D image, found NAXIS={header.get('NAXIS')}")
    nw, ny, nx = (int(header[f"NAXIS{k}"]) for k in (3, 2, 1))
    step = max(1, _BLOCK_VOXELS // max(ny * nx, 1))
    total = np.zeros((ny, nx), dtype=np.int64)
    for start in range(0, nw, step):
        total += (np.asarray(hdu.section[start:start + step]) != 0).sum(axis=0)
    return (nw, ny, nx), total


def file_info(path):
    """Summarise a cleaned file.

    Parameters
    ----------
    path : str or Path
        A file written by ``layerclip clean``.

    Returns
    -------
    CleanedInfo

    Raises
    ------
    InputFileError
        The file is missing or not FITS.
    CubeFormatError
        The file is not a layerclip output (no ``layerclip`` HISTORY and no
        ``CLIPPED`` extension), or its extensions are malformed.
    """
    from .io.formats import open_fits

    path = Path(path)
    out = CleanedInfo(path=path)
    with open_fits(path) as hdul:
        for hdu in hdul:
            lines = layerclip_history(hdu.header)
            if lines:
                out.history = lines
                break
        i_clip, i_layers = _index(hdul, "CLIPPED"), _index(hdul, "LAYERS")
        if not out.history and i_clip is None:
            raise CubeFormatError(f"{path}: not a layerclip output (no layerclip HISTORY "
                                  "cards and no CLIPPED extension)")
        out.params = parse_history(out.history)
        per_spaxel = None
        try:
            if i_clip is not None:
                out.shape, per_spaxel = _flagged_per_spaxel(hdul[i_clip])
                out.replaced = int(per_spaxel.sum())
            if i_layers is not None and per_spaxel is not None:
                layer_map = np.asarray(hdul[i_layers].data)
                if layer_map.shape != per_spaxel.shape:
                    raise CubeFormatError(f"{path}[LAYERS]: shape {layer_map.shape} differs "
                                          f"from CLIPPED's spaxels {per_spaxel.shape}")
                for g in np.unique(layer_map):
                    if g < 0:
                        continue
                    sel = layer_map == g
                    out.groups.append((int(g), int(sel.sum()), int(per_spaxel[sel].sum())))
        except LayerclipError:
            raise
        except Exception as exc:
            raise CubeFormatError(f"{path}: CLIPPED/LAYERS extension cannot be read "
                                  f"({type(exc).__name__}: {exc})") from None
        has_undo = (_index(hdul, UNDO_EXTNAME) is not None
                    and _index(hdul, HEADERS_EXTNAME) is not None)
    if not has_undo:
        out.restore_note = f"no {UNDO_EXTNAME} undo table"
        return out
    try:
        record = read_undo(path)
    except LayerclipError as exc:
        out.restore_note = str(exc)
        return out
    missing = [name for name in record.files if not (path.parent / name).exists()]
    if missing:
        out.restore_note = f"companion file(s) missing: {', '.join(missing)}"
    elif out.replaced is not None and record.n_voxels != out.replaced:
        out.restore_note = (f"undo table has {record.n_voxels} voxels but CLIPPED marks "
                            f"{out.replaced}")
    else:
        out.restorable = True
        out.restore_note = f"original values of {record.n_voxels} voxels kept"
    return out
