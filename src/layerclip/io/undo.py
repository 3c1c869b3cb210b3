"""Lossless undo: the original values of every voxel layerclip changed, and restore.

A cleaned file carries two small binary-table extensions after everything else:

``ORIGINAL``
    One row per replaced voxel: ``PLANE``, ``Y``, ``X`` (0-based indices into the
    cube) and the voxel's original stored values, one column per changed image,
    in the image's own stored (raw, big-endian, unscaled) type: ``SCI``, ``ERR``
    (or ``VAR`` for a variance image) and ``DQ`` (when the DQ image was changed).
    The header says where each image lives (``SCIHDU``, ``NOISHDU``, ``DQHDU``;
    ``*FILE`` names a companion file beside the cleaned one, blank for the same
    file) and how many HDUs the input had (``NHDUIN``).
``ORIGHDR``
    The original bytes of every header layerclip re-wrote (the flux header that
    gained HISTORY cards, a primary header that gained cards): ``FILE``, ``HDU``,
    ``NBYTES`` and ``TEXT`` (the header bytes).

:func:`restore_file` copies the first ``NHDUIN`` HDUs of the cleaned file (and
its companion files), puts the original headers back, and writes the original
values back into the changed voxels, through a temporary file renamed into
place. Values are moved as raw bytes, never converted, so the restored file is
the input byte for byte (NaN payloads, BSCALE-scaled and unsigned data alike).
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import InputFileError, LayerclipError, OutputError, RestoreError

__all__ = ["UndoLog", "UNDO_EXTNAME", "HEADERS_EXTNAME", "UndoRecord", "read_undo",
           "restore_file", "LAYERCLIP_EXTNAMES"]

log = logging.getLogger(__name__)

UNDO_EXTNAME = "ORIGINAL"
HEADERS_EXTNAME = "ORIGHDR"
#: Extensions a cleaned file gains (restore drops every HDU after the input's own).
LAYERCLIP_EXTNAMES = ("CLIPPED", "LAYERS", UNDO_EXTNAME, HEADERS_EXTNAME)
_VERSION = 1
_ROLES = ("sci", "noise", "dq")
_KEY = {"sci": "SCI", "noise": "NOIS", "dq": "DQ"}
# FITS binary-table formats of the raw (stored) image types.
_TFORM = {("f", 4): "E", ("f", 8): "D", ("u", 1): "B", ("i", 2): "I", ("i", 4): "J",
          ("i", 8): "K"}
_CHUNK = 64 * 2**20


def _tform(dtype):
    dtype = np.dtype(dtype)
    try:
        return _TFORM[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise OutputError(f"cannot record original values of type {dtype}") from None


class UndoLog:
    """Collects what a :class:`~layerclip.io.output.CleanedWriter` changes.

    Parameters
    ----------
    layout : `~layerclip.io.formats.CubeLayout`
        Where the cube's parts live in the input.
    paths : dict
        ``{input file: output file}`` of the writer, flux file first.
    """

    def __init__(self, layout, paths):
        self.layout = layout
        self.paths = dict(paths)
        self.flux_input = layout.sci.path
        self._coords = []
        self._values = {role: [] for role in _ROLES}
        self._dtypes = {}
        self._headers = []
        with fits.open(self.flux_input, memmap=True) as hdul:
            self.n_hdus = len(hdul)

    def _file_key(self, path):
        """Name of the output holding input file ``path``, blank for the flux output."""
        path = Path(path)
        if path == Path(self.flux_input):
            return ""
        return Path(self.paths[path]).name

    def keep_header(self, path, index, info):
        """Remember the original bytes of header ``index`` of input file ``path``.

        ``info`` is the HDU's ``fileinfo()`` (header and data offsets in ``path``).
        """
        with open(path, "rb") as f:
            f.seek(info["hdrLoc"])
            raw = f.read(info["datLoc"] - info["hdrLoc"])
        self._headers.append((self._file_key(path), int(index), raw))

    def add_block(self, start, flags):
        """Record the coordinates of the voxels replaced in planes ``start:...``."""
        plane, y, x = np.nonzero(flags)
        if plane.size:
            self._coords.append(np.stack([plane + int(start), y, x]).astype(np.int32))

    def add_values(self, role, values):
        """Record original stored values of ``role`` ("sci", "noise", "dq") for the
        voxels of the last :meth:`add_block`, in the same (C) order."""
        values = np.asarray(values)
        self._dtypes[role] = values.dtype
        self._values[role].append(values.copy())

    @property
    def n_rows(self):
        return int(sum(c.shape[1] for c in self._coords))

    def _member_cards(self, header, role, column):
        member = getattr(self.layout, role)
        key = _KEY[role]
        header[f"{key}HDU"] = (member.index, f"HDU index of the {column} image")
        header[f"{key}FILE"] = (self._file_key(member.path),
                                f"file of the {column} image (blank: this file)")
        header[f"{key}COL"] = (column, f"column of the original {column} values")

    def hdus(self, dtypes):
        """The ``ORIGINAL`` and ``ORIGHDR`` binary-table HDUs.

        Parameters
        ----------
        dtypes : dict
            ``{role: stored dtype}`` of every image the writer changes (so that a
            table without rows still has its columns).
        """
        for role, dtype in dtypes.items():
            self._dtypes.setdefault(role, np.dtype(dtype))
        coords = (np.concatenate(self._coords, axis=1) if self._coords
                  else np.zeros((3, 0), dtype=np.int32))
        n = coords.shape[1]
        columns = [fits.Column(name=name, format="J", array=coords[i])
                   for i, name in enumerate(("PLANE", "Y", "X"))]
        header = fits.Header()
        header["LCUNDO"] = (_VERSION, "layerclip undo table version")
        header["NHDUIN"] = (self.n_hdus, "HDUs of the input file (restore keeps these)")
        for role in _ROLES:
            if role not in self._dtypes:
                continue
            column = {"sci": "SCI", "dq": "DQ"}.get(role) or (
                "VAR" if self.layout.variance else "ERR")
            parts = self._values[role]
            values = (np.concatenate(parts) if parts
                      else np.zeros(0, dtype=self._dtypes[role]))
            if values.size != n:
                raise OutputError(f"undo table: {values.size} original {column} values for "
                                  f"{n} replaced voxels")
            columns.append(fits.Column(name=column, format=_tform(values.dtype), array=values))
            self._member_cards(header, role, column)
        table = fits.BinTableHDU.from_columns(columns, header=header, name=UNDO_EXTNAME)
        # Header texts as bytes, padded to the longest.
        width = max([len(t) for _, _, t in self._headers] + [1])
        text = np.zeros((len(self._headers), width), dtype=np.uint8)
        for i, (_, _, raw) in enumerate(self._headers):
            text[i, :len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        hcols = [
            fits.Column(name="FILE", format="80A",
                        array=np.array([f for f, _, _ in self._headers] or [], dtype="U80")),
            fits.Column(name="HDU", format="J",
                        array=np.array([i for _, i, _ in self._headers], dtype=np.int32)),
            fits.Column(name="NBYTES", format="K",
                        array=np.array([len(t) for _, _, t in self._headers], dtype=np.int64)),
            fits.Column(name="TEXT", format=f"{width}B", array=text),
        ]
        headers = fits.BinTableHDU.from_columns(hcols, name=HEADERS_EXTNAME)
        headers.header["LCUNDO"] = (_VERSION, "layerclip undo table version")
        return [table, headers]


# ----------------------------------------------------------------------------- reading

@dataclass
class UndoRecord:
    """The undo information of a cleaned file.

    Attributes
    ----------
    path : Path
        The cleaned (flux) file.
    n_hdus : int
        HDUs of the input flux file.
    coords : ndarray of int, shape (3, n)
        Plane, y, x of every replaced voxel.
    values : dict
        ``{role: raw original values}`` for the roles ``sci``, ``noise``, ``dq``.
    members : dict
        ``{role: (file name or "", HDU index, column)}``.
    headers : list of (str, int, bytes)
        Original header bytes ``(file, hdu, bytes)``.
    """

    path: Path
    n_hdus: int
    coords: np.ndarray
    values: dict
    members: dict
    headers: list

    @property
    def n_voxels(self):
        return int(self.coords.shape[1])

    @property
    def files(self):
        """Companion files named by the record (beside the cleaned file)."""
        out = []
        for name, _, _ in self.members.values():
            if name and name not in out:
                out.append(name)
        return out


def _find_hdu(hdul, name):
    for i, hdu in enumerate(hdul):
        if hdu.name.upper() == name:
            return i
    return None


def read_undo(path):
    """Read the undo tables of a cleaned file.

    Raises
    ------
    RestoreError
        When the file has no (or an unusable) undo table.
    """
    from .formats import open_fits

    path = Path(path)
    with open_fits(path) as hdul:
        i = _find_hdu(hdul, UNDO_EXTNAME)
        j = _find_hdu(hdul, HEADERS_EXTNAME)
        if i is None or j is None:
            missing = UNDO_EXTNAME if i is None else HEADERS_EXTNAME
            raise RestoreError(f"{path}: no {missing} extension; this file was not written "
                               "by layerclip with an undo table, it cannot be restored")
        try:
            header = hdul[i].header
            data = hdul[i].data
            nhdu = int(header["NHDUIN"])
            coords = np.stack([np.asarray(data[c], dtype=np.int64)
                               for c in ("PLANE", "Y", "X")]) if data is not None and len(
                data) else np.zeros((3, 0), dtype=np.int64)
            members, values = {}, {}
            for role in _ROLES:
                key = _KEY[role]
                if f"{key}HDU" not in header:
                    continue
                column = header[f"{key}COL"]
                members[role] = (str(header[f"{key}FILE"]).strip(), int(header[f"{key}HDU"]),
                                 column)
                values[role] = (np.array(data[column]) if data is not None and len(data)
                                else np.zeros(0))
            hdata = hdul[j].data
            headers = []
            if hdata is not None:
                for row in hdata:
                    raw = np.asarray(row["TEXT"], dtype=np.uint8)[: int(row["NBYTES"])]
                    headers.append((str(row["FILE"]).strip(), int(row["HDU"]), raw.tobytes()))
        except LayerclipError:
            raise
        except Exception as exc:
            raise RestoreError(f"{path}[{UNDO_EXTNAME}]: undo table not understood "
                               f"({type(exc).__name__}: {exc})") from None
    if "sci" not in members:
        raise RestoreError(f"{path}[{UNDO_EXTNAME}]: no SCI column")
    return UndoRecord(path=path, n_hdus=nhdu, coords=coords, values=values, members=members,
                      headers=headers)


# ----------------------------------------------------------------------------- restoring

def _copy_range(fin, fout, offset, length):
    fin.seek(offset)
    left = length
    while left > 0:
        chunk = fin.read(min(left, _CHUNK))
        if not chunk:
            raise RestoreError(f"{fin.name}: file ends early (truncated?)")
        fout.write(chunk)
        left -= len(chunk)


def _rebuild(src, tmp, *, n_hdus, headers):
    """Copy HDUs ``0..n_hdus-1`` of ``src`` into ``tmp`` with original ``headers``
    (``{hdu: bytes}``); returns ``{hdu: (data offset in tmp, shape, raw dtype)}``."""
    from .formats import BITPIX_DTYPES

    where = {}
    with fits.open(src, memmap=True) as hdul, open(src, "rb") as fin, open(tmp, "wb") as fout:
        if n_hdus > len(hdul):
            raise RestoreError(f"{src}: has {len(hdul)} HDUs, the undo table expects at "
                               f"least {n_hdus}")
        for i in range(n_hdus):
            hdu = hdul[i]
            info = hdu.fileinfo()
            if i in headers:
                fout.write(headers[i])
            else:
                _copy_range(fin, fout, info["hdrLoc"], info["datLoc"] - info["hdrLoc"])
            at = fout.tell()
            _copy_range(fin, fout, info["datLoc"], info["datSpan"])
            h = hdu.header
            naxis = int(h.get("NAXIS", 0))
            shape = tuple(int(h[f"NAXIS{k}"]) for k in range(naxis, 0, -1))
            where[i] = (at, shape, BITPIX_DTYPES.get(h.get("BITPIX")))
    return where


def _patch(tmp, at, shape, raw, coords, values, label):
    if len(shape) != 3:
        raise RestoreError(f"{label}: expected a 3-D image, found shape {shape}")
    if raw is None:
        raise RestoreError(f"{label}: unsupported BITPIX")
    if coords.size and (coords.min() < 0 or np.any(coords.max(axis=1) >= np.array(shape))):
        raise RestoreError(f"{label}: undo table coordinates outside the cube {shape}")
    if not coords.shape[1]:
        return
    raw = np.dtype(raw)
    if values.dtype.newbyteorder("=") != raw.newbyteorder("="):
        raise RestoreError(f"{label}: stored type {raw} does not match the undo table's "
                           f"{values.dtype}")
    # Same kind and size: at most a byte swap, which keeps every bit (NaN payloads too).
    values = values.astype(raw)
    mm = np.memmap(tmp, dtype=raw, mode="r+", offset=at, shape=shape)
    try:
        mm[coords[0], coords[1], coords[2]] = values
        mm.flush()
    finally:
        del mm


def restore_file(cleaned, output, *, overwrite=False):
    """Give back the input of ``layerclip clean``, byte for byte.

    Parameters
    ----------
    cleaned : str or Path
        A file written by ``layerclip clean`` (its companion files, for layouts
        with several files, beside it under the names it records).
    output : str or Path
        The restored (flux) file; companions go beside it, named as
        :func:`~layerclip.io.output.output_paths` names cleaned companions.
    overwrite : bool
        Replace existing outputs.

    Returns
    -------
    dict
        ``{cleaned file: restored file}``.

    Raises
    ------
    RestoreError, InputFileError, OutputError
    """
    from .output import _temp_beside, check_free_space, check_output_path, output_paths

    cleaned, output = Path(cleaned), Path(output)
    record = read_undo(cleaned)
    files = [cleaned] + [cleaned.parent / name for name in record.files]
    for f in files[1:]:
        if not f.exists():
            raise InputFileError(f"{f}: companion file of {cleaned} not found; restore needs "
                                 "every file the cleaned cube was written as")
    paths = output_paths(_Files(files), output)
    for out in paths.values():
        check_output_path(out, inputs=files, overwrite=overwrite)
    check_free_space(output.parent, sum(f.stat().st_size for f in files), option="-o")
    by_name = {"": cleaned, **{name: cleaned.parent / name for name in record.files}}
    tmp = {}
    try:
        for key, src in by_name.items():
            tmp[key] = t = _temp_beside(paths[src])
            with fits.open(src, memmap=True) as hdul:
                n_hdus = record.n_hdus if key == "" else len(hdul)
            heads = {i: raw for f, i, raw in record.headers if f == key}
            where = _rebuild(src, t, n_hdus=n_hdus, headers=heads)
            for role, (fname, index, column) in record.members.items():
                if fname != key:
                    continue
                if index not in where:
                    raise RestoreError(f"{src}: HDU {index} of the {column} image is missing")
                at, shape, raw = where[index]
                _patch(t, at, shape, raw, record.coords, record.values[role],
                       f"{src}[{index}]")
        # Companions first: the flux file appearing last marks a complete output.
        for key in [k for k in by_name if k] + [""]:
            os.chmod(tmp[key], 0o644)
            os.replace(tmp[key], paths[by_name[key]])
    except BaseException:
        for t in tmp.values():
            Path(t).unlink(missing_ok=True)
        raise
    log.info("%s: restored %d voxels into %s", cleaned, record.n_voxels, output)
    return {src: paths[src] for src in by_name.values()}


@dataclass
class _Files:
    """Stand-in layout for :func:`~layerclip.io.output.output_paths`."""

    files: list
