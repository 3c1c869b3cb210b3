"""Writing cleaned cubes: a copy of the input in which only what cleaning changed differs.

The output keeps the input's own layout (JWST s3d, MUSE, ESO, KCWI flux/variance/
mask files, generic): every file of the cube is copied byte for byte into a
temporary file in the destination folder, HDU by HDU (headers that gain HISTORY
or provenance cards are re-serialised, data are copied as raw bytes); the
replaced voxels are then written through short-lived memory maps, block of
planes by block of planes; the ``CLIPPED`` log (uint8, 1 where a voxel was
replaced) is appended block by block, then ``LAYERS`` and any extra HDUs; FITS
checksums of changed HDUs that had them are recomputed block-wise; finally the
files are renamed into place. Memory use is bounded by the block, whatever the
size of the cube.
"""

import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import OutputError
from .cube import DO_NOT_USE, OUTLIER
from .undo import UndoLog

__all__ = ["atomic_writeto", "check_output_path", "write_cleaned", "CleanedWriter",
           "output_paths", "hdu_bytes", "update_checksums", "dq_bits_for"]


def dq_bits_for(replace):
    """DQ bits set on replaced voxels: OUTLIER, plus DO_NOT_USE when ``replace="nan"``.

    With ``replace="nan"`` SCI and ERR of flagged voxels are NaN, and DQ marks them
    DO_NOT_USE | OUTLIER, as the jwst pipeline's outlier detection does.
    """
    return OUTLIER | DO_NOT_USE if replace == "nan" else OUTLIER

_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|PC\d_\d|CD\d_\d|PS\d_\d|PV\d_\d"
    r"|RADESYS|EQUINOX|SPECSYS|LONPOLE|LATPOLE)$"
)
_BLOCK = 2880
_COPY_CHUNK = 64 * 2**20
# Header space kept free in the flux HDU for HISTORY lines known only at the end
# (replaced-voxel counts of a streamed cube).
_RESERVE_CARDS = 36


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
    tmp = _temp_beside(path)
    try:
        hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _temp_beside(path):
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a file in folder {folder} "
                          f"({exc.strerror or exc})") from None
    os.close(fd)
    return Path(tmp)


def check_free_space(folder, need_bytes, *, option="-o", margin=1.05):
    """Refuse to start when ``folder`` has less free space than ``need_bytes`` (+5 %)."""
    folder = Path(folder) if str(folder) else Path(".")
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return  # the folder checks report what is wrong with it
    free = usage.free
    if usage.total == 0:
        return  # a pseudo file system (/proc ...): creating the file reports the problem
    if free < need_bytes * margin:
        raise OutputError(f"{option} {folder}: {free / 2**20:.1f} MiB free, the output needs "
                          f"about {need_bytes * margin / 2**20:.1f} MiB")


def _wcs_cards(header):
    out = fits.Header()
    for card in header.cards:
        if _WCS_KEY.match(card.keyword):
            out.append(card)
    return out


def hdu_bytes(hdu):
    """The bytes of ``hdu`` as a FITS extension (header and padded data)."""
    if isinstance(hdu, fits.PrimaryHDU):
        hdu = fits.ImageHDU(data=hdu.data, header=hdu.header)
    buffer = io.BytesIO()
    primary = fits.PrimaryHDU()
    fits.HDUList([primary, hdu]).writeto(buffer, output_verify="silentfix")
    return buffer.getvalue()[len(primary.header.tostring()):]


def _split_token(a, b):
    """The differing word of two file names (``icubes``/``vcubes``, ``flux``/``var``)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    while i > 0 and a[i - 1] not in "._-":
        i -= 1
    j = 0
    while j < n - i and a[-1 - j] == b[-1 - j]:
        j += 1
    while j > 0 and a[len(a) - j] not in "._-":
        j -= 1
    return a[i:len(a) - j], b[i:len(b) - j]


def output_paths(layout, output_path):
    """Output file of every file of the cube: ``{input: output}``, the flux file first.

    The flux file goes to ``output_path``. A companion file (KCWI variance and
    mask, a separate variance/error/DQ file) goes beside it: the word that tells
    the companion from the flux file (``icubes`` -> ``vcubes``) is substituted in
    the output name when present, else appended (``clean.fits`` -> ``clean_vcubes.fits``).
    """
    output_path = Path(output_path)
    files = layout.files
    out = {files[0]: output_path}
    for other in files[1:]:
        mine, theirs = _split_token(files[0].name, other.name)
        name = output_path.name
        if mine and mine in name:
            pos = name.rfind(mine)
            new = name[:pos] + theirs + name[pos + len(mine):]
        else:
            suffix = "".join(output_path.suffixes) or ".fits"
            stem = name[: len(name) - len(suffix)] if output_path.suffixes else name
            new = f"{stem}_{theirs or other.stem}{suffix}"
        out[other] = output_path.with_name(new)
    return out


# ----------------------------------------------------------------------------- checksums

def _fold(total):
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _ones_sum(data):
    """32-bit ones'-complement sum of big-endian words (``len(data) % 4 == 0``)."""
    words = np.frombuffer(data, dtype=">u4")
    return _fold(int(words.sum(dtype=np.uint64)))


_EXCLUDE = frozenset(range(0x3A, 0x41)) | frozenset(range(0x5B, 0x61))


def _encode_checksum(value):
    """ASCII encoding of a 32-bit checksum (Seaman, Pence & Rots 2002)."""
    asc = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        ch = [byte // 4 + 0x30] * 4
        ch[0] += byte % 4
        check = True
        while check:
            check = False
            for j in (0, 2):
                while ch[j] in _EXCLUDE or ch[j + 1] in _EXCLUDE:
                    ch[j] += 1
                    ch[j + 1] -= 1
                    check = True
        for j in range(4):
            asc[4 * j + i] = ch[j]
    return bytes(asc[(i + 15) % 16] for i in range(16)).decode("ascii")


def _data_sum(f, offset, span):
    f.seek(offset)
    total = 0
    left = span
    while left > 0:
        chunk = f.read(min(left, _COPY_CHUNK))
        if not chunk:
            break
        total = _fold(total + _ones_sum(chunk))
        left -= len(chunk)
    return total


def update_checksums(path, indices):
    """Recompute CHECKSUM/DATASUM of the HDUs ``indices`` of ``path`` in place, block-wise.

    Only HDUs whose header already has a CHECKSUM or DATASUM card are updated; the
    header length does not change.
    """
    with fits.open(path, memmap=True) as hdul:
        todo = []
        for i in indices:
            header = hdul[i].header
            if "CHECKSUM" in header or "DATASUM" in header:
                info = hdul[i].fileinfo()
                todo.append((i, header.copy(), info["hdrLoc"], info["datLoc"],
                             info["datSpan"]))
    if not todo:
        return
    with open(path, "r+b") as f:
        for _, header, hdr_loc, dat_loc, dat_span in todo:
            datasum = _data_sum(f, dat_loc, dat_span)
            header["DATASUM"] = str(datasum)
            header["CHECKSUM"] = "0" * 16
            text = header.tostring().encode("ascii")
            if len(text) != dat_loc - hdr_loc:
                raise OutputError(f"{path}: header length changed while updating CHECKSUM")
            total = _fold(_ones_sum(text) + datasum)
            header["CHECKSUM"] = _encode_checksum(~total & 0xFFFFFFFF)
            f.seek(hdr_loc)
            f.write(header.tostring().encode("ascii"))


# ----------------------------------------------------------------------------- writer

def _copy_range(src, dst, offset, length):
    left = length
    if hasattr(os, "copy_file_range") and length > _COPY_CHUNK:
        # In-kernel copy (no data through Python); falls back below if refused.
        dst.flush()
        out_at = dst.tell()
        try:
            while left > 0:
                n = os.copy_file_range(src.fileno(), dst.fileno(), min(left, 2**30),
                                       offset + length - left, out_at + length - left)
                if n == 0:
                    raise OutputError(f"{src.name}: file ends early while copying (truncated?)")
                left -= n
        except OSError:
            pass
        dst.seek(out_at + length - left)
    src.seek(offset + length - left)
    while left > 0:
        chunk = src.read(min(left, _COPY_CHUNK))
        if not chunk:
            raise OutputError(f"{src.name}: file ends early while copying (truncated?)")
        dst.write(chunk)
        left -= len(chunk)


def _header_text(header, history, *, reserve=0, size=None):
    """Serialised ``header`` with ``history`` added, padded with blank cards before END.

    With ``size`` the text is exactly ``size`` bytes (so that it can replace a
    header written earlier in place); otherwise room for ``reserve`` more cards is
    left.
    """
    header = header.copy()
    for line in history:
        header.add_history(line)
    text = header.tostring(padding=False).encode("ascii")
    if size is None:
        size = -(-(len(text) + 80 * reserve) // _BLOCK) * _BLOCK
    if len(text) > size:
        raise OutputError(f"{len(text) // 80} header cards do not fit in the {size // 80} "
                          "reserved for the flux header")
    # Blank cards (80 spaces) are legal anywhere before END; END stays the last card.
    return text[:-80] + b" " * (size - len(text)) + text[-80:]


class CleanedWriter:
    """Write the cleaned copy of a cube block of planes by block of planes.

    Use as a context manager: on an exception the temporary files are removed
    and nothing appears under the output names. Call :meth:`update` for each
    block of planes in increasing order, covering every plane once, then
    :meth:`finish`.

    Parameters
    ----------
    source : `~layerclip.io.formats.CubeSource`
        The cube being cleaned (its layout and byte locations).
    output_path : str or Path
        Output of the flux file; companions go beside it (see :func:`output_paths`).
    history : iterable of str
        HISTORY cards for the flux HDU's header (more can be given to :meth:`finish`).
    primary_cards : dict, optional
        ``{KEY: (value, comment)}`` set in the primary header of the flux output.
    dq_bits : int
        Bits OR-ed into a JWST DQ image on replaced voxels (default OUTLIER).
    overwrite : bool
        Replace existing outputs.
    reserve_cards : int
        Header cards kept free in the flux header for HISTORY given to :meth:`finish`.
    """

    def __init__(self, source, output_path, *, history=(), primary_cards=None,
                 dq_bits=OUTLIER, overwrite=False, reserve_cards=_RESERVE_CARDS):
        self.source = source
        self.layout = layout = source.layout
        self.paths = output_paths(layout, output_path)
        self.output_path = Path(output_path)
        self.dq_bits = int(dq_bits)
        self.nw, self.ny, self.nx = source.shape
        self._done = 0
        self._tmp = {}
        self._history = list(history)
        self._reserve = int(reserve_cards)
        self._sci_header = None
        for out in self.paths.values():
            check_output_path(out, inputs=layout.files, overwrite=overwrite)
        # Copies of the input files plus the CLIPPED log (and a little for LAYERS/undo).
        check_free_space(self.output_path.parent,
                         sum(Path(f).stat().st_size for f in layout.files)
                         + self.nw * self.ny * self.nx + 2**20)
        for role in ("sci", "noise", "dq"):
            image = source.image(role)
            if image is not None and not image.mappable:
                raise OutputError(
                    f"{image.member.label}: compressed cubes cannot be written back in place; "
                    "decompress the file (funpack / gunzip) and clean that")
        with fits.open(layout.sci.path, memmap=True) as hdul:
            names = [h.name.upper() for h in hdul]
        for ext in ("CLIPPED", "LAYERS"):
            if ext in names:
                raise OutputError(
                    f"{layout.sci.path}: already has a {ext} extension; it looks like a "
                    "layerclip output, clean the original cube instead")
        # Data offsets of the changed images in the outputs, and HDUs to re-checksum.
        self._where = {}
        self._changed = {}
        # Original values and headers of everything changed, for `layerclip restore`.
        self._undo = UndoLog(layout, self.paths)
        try:
            for src, out in self.paths.items():
                self._tmp[src] = tmp = _temp_beside(out)
                main = src == layout.sci.path
                self._copy(src, tmp, primary_cards=primary_cards if main else None)
            self._main = open(self._tmp[layout.sci.path], "ab")  # noqa: SIM115
            clipped = fits.ImageHDU(data=np.zeros((1, 1, 1), np.uint8),
                                    header=_wcs_cards(source.header), name="CLIPPED")
            clipped.header["NAXIS1"], clipped.header["NAXIS2"] = self.nx, self.ny
            clipped.header["NAXIS3"] = self.nw
            clipped.header["BUNIT"] = ("", "1 where layerclip replaced the voxel")
            self._main.write(clipped.header.tostring().encode("ascii"))
        except BaseException:
            self.abort()
            raise

    def _copy(self, src, tmp, *, primary_cards):
        layout = self.layout
        roles = {(m.path, m.index): role for role, m in
                 (("sci", layout.sci), ("noise", layout.noise), ("dq", layout.dq))
                 if m is not None}
        if layout.dq is not None and layout.dq_style != "jwst":
            roles.pop((layout.dq.path, layout.dq.index), None)  # left unchanged
        with fits.open(src, memmap=True) as hdul, open(src, "rb") as fin, \
                open(tmp, "wb") as fout:
            for i, hdu in enumerate(hdul):
                info = hdu.fileinfo()
                header = None
                is_sci = i == layout.sci.index and src == layout.sci.path
                if i == 0 and primary_cards:
                    header = hdu.header.copy()
                    for key, value in primary_cards.items():
                        header[key] = value
                if is_sci:
                    header = (header or hdu.header).copy()
                    self._sci_header = (tmp, fout.tell(), header)
                    text = _header_text(header, self._history, reserve=self._reserve)
                    self._sci_header += (len(text),)
                    fout.write(text)
                elif header is None:
                    _copy_range(fin, fout, info["hdrLoc"], info["datLoc"] - info["hdrLoc"])
                else:
                    fout.write(header.tostring().encode("ascii"))
                data_at = fout.tell()
                _copy_range(fin, fout, info["datLoc"], info["datSpan"])
                role = roles.get((src, i))
                if role is not None:
                    self._where[role] = (tmp, data_at)
                if role is not None or header is not None:
                    self._changed.setdefault(tmp, []).append(i)
                    self._undo.keep_header(src, i, info)

    def _patch(self, role, start, flags, values=None, bits=None):
        image = self.source.image(role)
        tmp, data_at = self._where[role]
        n = flags.shape[0]
        mm = np.memmap(tmp, dtype=image.raw, mode="r+",
                       offset=data_at + start * image.plane_bytes,
                       shape=(n, *image.shape[1:]))
        try:
            self._undo.add_values(role, mm[flags])
            if bits is not None:
                mm[flags] |= np.asarray(bits).astype(image.raw)
            else:
                if image.scaled:
                    values = (np.asarray(values, dtype=float) - image.bzero) / image.bscale
                mm[flags] = np.asarray(values).astype(image.raw)
            mm.flush()
        finally:
            del mm

    def update(self, start, flags, sci, err):
        """Write planes ``start:start + len(flags)``.

        Parameters
        ----------
        start : int
            First plane of the block; blocks must come in order, without gaps.
        flags : ndarray of bool, shape (n, ny, nx)
            True where a voxel was replaced.
        sci, err : ndarray, shape (n, ny, nx)
            Cleaned flux and 1-sigma error of the block (only flagged voxels are used).
        """
        if start != self._done:
            raise OutputError(f"blocks out of order: expected plane {self._done}, got {start}")
        flags = np.asarray(flags, dtype=bool)
        if flags.any():
            self._undo.add_block(start, flags)
            self._patch("sci", start, flags, sci[flags])
            noise = err[flags]
            if self.layout.variance:
                noise = np.asarray(noise, dtype=np.float64) ** 2
            self._patch("noise", start, flags, noise)
            if "dq" in self._where and self.dq_bits:
                self._patch("dq", start, flags, bits=self.dq_bits)
        self._main.write(flags.astype(np.uint8).tobytes())
        self._done += flags.shape[0]

    def finish(self, layer_hdu=None, extra_hdus=(), *, history=()):
        """Append ``LAYERS`` and ``extra_hdus``, add ``history``, fix checksums, rename.

        Returns
        -------
        dict
            ``{input file: output file}``.
        """
        try:
            if self._done != self.nw:
                raise OutputError(f"only {self._done} of {self.nw} planes were written")
            size = self.nw * self.ny * self.nx
            self._main.write(b"\0" * (-size % _BLOCK))
            undo = self._undo.hdus({role: self.source.image(role).raw for role in self._where
                                    if role != "dq" or self.dq_bits})
            for hdu in ([layer_hdu] if layer_hdu is not None else []) + list(extra_hdus) + undo:
                self._main.write(hdu_bytes(hdu))
            self._main.close()
            if history:
                tmp, at, header, size = self._sci_header
                text = _header_text(header, self._history + list(history), size=size)
                with open(tmp, "r+b") as f:
                    f.seek(at)
                    f.write(text)
            for tmp, indices in self._changed.items():
                update_checksums(tmp, indices)
            # Companions first: the flux file appearing last marks a complete output.
            order = [p for p in self.paths if p != self.layout.sci.path]
            order.append(self.layout.sci.path)
            for src in order:
                os.chmod(self._tmp[src], 0o644)
                os.replace(self._tmp[src], self.paths[src])
        except BaseException:
            self.abort()
            raise
        return dict(self.paths)

    def abort(self):
        """Remove the temporary files."""
        main = getattr(self, "_main", None)
        if main is not None and not main.closed:
            main.close()
        for tmp in self._tmp.values():
            Path(tmp).unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def write_cleaned(input_path, output_path, result, *, layer_hdu, history=(),
                  sci=None, err=None, dq=None, overwrite=False, source=None,
                  primary_cards=None, extra_hdus=(), dq_bits=OUTLIER):
    """Write the cleaned copy of a cube, in the input's own layout.

    Only the flux and uncertainty values of replaced voxels change (a variance
    file gets the square of the new error), a JWST DQ image gains the OUTLIER bit
    on them, HISTORY cards are added to the flux header, and extensions are
    appended to the flux file: ``CLIPPED`` (uint8, 1 where a voxel was replaced),
    ``LAYERS`` and ``extra_hdus``. Every other HDU and file is passed through
    byte for byte.

    Parameters
    ----------
    input_path, output_path : str or Path
    result : ClipResult
        From :func:`layerclip.clip_cube` on the cube read from ``input_path``.
    layer_hdu : `~astropy.io.fits.ImageHDU`
        The ``LAYERS`` extension, from :func:`layerclip.io.layermap.layer_map_hdu`.
    history : iterable of str
        Provenance lines for the flux header.
    sci, err, dq : str, optional
        EXTNAMEs overriding the detected layout (used when ``source`` is None).
    overwrite : bool
        Replace an existing output.
    source : `~layerclip.io.formats.CubeSource`, optional
        The opened input (its layout); detected from ``input_path`` when None.
    primary_cards : dict, optional
        ``{KEY: (value, comment)}`` for the primary header of the output.
    extra_hdus : sequence of HDU
        More extensions to append after ``LAYERS``.
    dq_bits : int
        Bits set in a JWST DQ image on replaced voxels (default OUTLIER).

    Returns
    -------
    Path
        The flux output (companion files, if any, are beside it).
    """
    from .formats import open_cube

    input_path, output_path = Path(input_path), Path(output_path)
    check_output_path(output_path, inputs=[input_path], overwrite=overwrite)
    if source is None:
        source = open_cube(input_path, sci=sci, err=err, dq=dq)
    with CleanedWriter(source, output_path, primary_cards=primary_cards, dq_bits=dq_bits,
                       overwrite=overwrite) as writer:
        writer.update(0, result.flags, result.sci, result.err)
        writer.finish(layer_hdu, extra_hdus, history=history)
    return output_path

