"""IFU cube file layouts: detection, and block-wise reading of planes.

A *layout* says where a cube's flux, uncertainty and data quality live (which
file, which HDU), whether the uncertainty is a 1-sigma error or a variance, and
how the format marks voxels without data. Supported, auto-detected:

``jwst``
    JWST NIRSpec / MIRI MRS level-3 ``s3d``: SCI, ERR (1-sigma), optional DQ with
    JWST bits (DO_NOT_USE = no data; replaced voxels get OUTLIER on output).
``muse``
    VLT/MUSE: DATA, STAT (variance), optional DQ (non-zero = no data).
``eso``
    ESO pipelines with ``<prefix>.DATA`` / ``<prefix>.NOISE`` (1-sigma) extensions,
    e.g. KMOS ``IFU.3.DATA``; empty (header-only) IFUs are skipped. With several
    filled IFUs name one with ``sci=``.
``kcwi``
    Keck/KCWI: flux (``*icube*``), variance (``*vcube*``) and mask (``*mcube*``)
    as separate single-HDU files on the same grid. Zero padding outside the slicer
    footprint (flux 0 and variance 0) and mask bit 128 are no data.
``generic``
    SCI/FLUX/DATA with ERR/ERROR/NOISE/SIGMA (1-sigma) or VAR/VARIANCE (variance),
    in one file or, with ``err_file=`` / ``var_file=``, in two.

Every part can be named explicitly (``sci=``, ``err=``, ``var=``, ``dq=`` take an
EXTNAME or an HDU index; ``err_file=``, ``var_file=``, ``dq_file=`` another file).

:class:`CubeSource` reads blocks of planes through short-lived memory maps of
the file, so a cube far larger than memory can be processed plane block by
plane block; :func:`layerclip.io.read_cube` reads a whole cube through it.
"""

import logging
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.io import fits

from ..errors import CubeFormatError, InputFileError, LayerclipWarning, OptionError

__all__ = ["FORMATS", "Member", "CubeLayout", "CubeSource", "Block", "detect_layout",
           "open_cube", "BITPIX_DTYPES"]

log = logging.getLogger(__name__)

FORMATS = ("auto", "jwst", "muse", "eso", "kcwi", "generic")

# FITS BITPIX -> big-endian dtype of the stored values.
BITPIX_DTYPES = {8: np.dtype("u1"), 16: np.dtype(">i2"), 32: np.dtype(">i4"),
                 64: np.dtype(">i8"), -32: np.dtype(">f4"), -64: np.dtype(">f8")}

_SCI_NAMES = ("SCI", "FLUX", "DATA")
_ERR_NAMES = ("ERR", "ERROR", "NOISE", "SIGMA", "UNCERT")
_VAR_NAMES = ("VAR", "VARIANCE", "STAT")
_DQ_NAMES = ("DQ", "MASK", "QUALITY")

# DQ styles: how a data-quality image marks voxels without data.
#   jwst:    bit 1 (DO_NOT_USE); output gets the OUTLIER bit on replaced voxels
#   nonzero: any non-zero value (MUSE / generic); left unchanged on output
#   kcwi:    bit 128 (no data); left unchanged on output
DQStyle = Literal["jwst", "nonzero", "kcwi"]
_KCWI_NODATA = 128


@dataclass(frozen=True)
class Member:
    """One image HDU of a cube file: the file, the HDU index, and a name for messages."""

    path: Path
    index: int
    extname: str

    @property
    def label(self):
        return f"{self.path}[{self.extname}]"


@dataclass(frozen=True)
class CubeLayout:
    """Where a cube's parts live, and what they mean.

    Attributes
    ----------
    format : str
        One of ``jwst``, ``muse``, ``eso``, ``kcwi``, ``generic``.
    sci, noise : Member
        Flux and uncertainty HDUs.
    variance : bool
        True when ``noise`` holds the variance, False for a 1-sigma error.
    dq : Member or None
        Data-quality HDU.
    dq_style : {"jwst", "nonzero", "kcwi"}
        How ``dq`` marks voxels without data.
    zero_padding : bool
        Voxels with flux 0 and uncertainty 0 are padding outside the footprint.
    """

    format: str
    sci: Member
    noise: Member
    variance: bool = False
    dq: Member | None = None
    dq_style: DQStyle = "jwst"
    zero_padding: bool = False

    @property
    def members(self):
        return [m for m in (self.sci, self.noise, self.dq) if m is not None]

    @property
    def files(self):
        """The files of the cube, the flux file first, without repeats."""
        out = []
        for m in self.members:
            if m.path not in out:
                out.append(m.path)
        return out

    def describe(self):
        noise = "variance" if self.variance else "1-sigma error"
        parts = [f"{self.format}: flux {self.sci.label}", f"{noise} {self.noise.label}"]
        if self.dq is not None:
            parts.append(f"dq {self.dq.label} ({self.dq_style})")
        return ", ".join(parts)


@dataclass
class Block:
    """Planes ``start:stop`` of a cube, in native byte order.

    ``err`` is the 1-sigma uncertainty (square root of a variance when the file
    holds variance); ``nodata`` is True for voxels the format marks as holding no
    data (NaN flux is excluded by the algorithms in any case).
    """

    start: int
    stop: int
    sci: np.ndarray
    err: np.ndarray
    dq: np.ndarray | None
    nodata: np.ndarray

    @property
    def excluded(self):
        return self.nodata | ~np.isfinite(self.sci)


# ----------------------------------------------------------------------------- detection

def _check_file(path, option="input"):
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a folder, expected a FITS file")
    return path


_OPEN_LOCK = threading.Lock()


def open_fits(path):
    """Open a FITS file lazily (headers parsed now, data untouched); one-line errors."""
    from .cube import prescan_fits

    path = _check_file(path)
    prescan_fits(path)
    hdul = None
    # astropy reports truncated or damaged files with warnings (and then drops HDUs
    # or data silently): record them, refuse the file on the fatal ones, and pass
    # the rest on as LayerclipWarning (never a traceback from inside astropy).
    # NOTE: catch_warnings swaps process-wide state; the lock keeps two threads (a
    # batch on a threaded Dask cluster) from recording each other's file warnings.
    with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=True, lazy_load_hdus=False)
            for i, hdu in enumerate(hdul):
                # Parse every card now: a damaged card fails here, with the file named,
                # rather than later inside astropy (VerifyError on first access).
                for card in hdu.header.cards:
                    try:
                        card.value  # noqa: B018
                    except Exception as exc:
                        raise InputFileError(
                            f"{path}: corrupt FITS header in HDU #{i}: card "
                            f"{card.keyword or '?'} cannot be parsed ({exc})") from None
        except InputFileError:
            _close_quietly(hdul)
            raise
        except OSError as exc:
            _close_quietly(hdul)
            raise InputFileError(f"{path}: not a readable FITS file ({exc})") from None
        except Exception as exc:  # astropy raises many types on corrupt files
            _close_quietly(hdul)
            raise InputFileError(
                f"{path}: corrupt FITS file ({type(exc).__name__}: {exc})") from None
    for w in caught:
        text = " ".join(str(w.message).split())
        if any(key in text for key in _FATAL_OPEN_WARNINGS):
            _close_quietly(hdul)
            what = "truncated" if "truncated" in text else "corrupt"
            raise InputFileError(f"{path}: {what} FITS file ({text})")
    for w in caught:
        if not issubclass(w.category, ResourceWarning):
            warnings.warn(f"{path}: {' '.join(str(w.message).split())}", LayerclipWarning,
                          stacklevel=2)
    return hdul


# Warnings of astropy.io.fits.open that mean HDUs or data are missing or misread.
_FATAL_OPEN_WARNINGS = ("truncated", "Error validating header", "Header size is not",
                        "extra bytes after the last HDU")


def _close_quietly(hdul):
    if hdul is not None:
        try:
            hdul.close()
        except Exception:  # noqa: S110 (already failing; the first error is the one to report)
            pass


def _extnames(hdul):
    return [h.header.get("EXTNAME", "PRIMARY" if i == 0 else f"#{i}").strip().upper()
            if isinstance(h.header.get("EXTNAME", ""), str) else f"#{i}"
            for i, h in enumerate(hdul)]


def _has_cube(hdu):
    return hdu.header.get("NAXIS", 0) == 3 and isinstance(
        hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def _has_image(hdu):
    return hdu.header.get("NAXIS", 0) > 0 and isinstance(
        hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def _member(hdul, path, spec, *, what, option):
    """Find the HDU named (EXTNAME) or numbered by ``spec``; None when absent and optional."""
    names = _extnames(hdul)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        if not 0 <= index < len(hdul):
            raise CubeFormatError(f"{option} {spec}: {path} has HDUs 0..{len(hdul) - 1}")
        return Member(Path(path), index, names[index])
    want = str(spec).strip().upper()
    for i, name in enumerate(names):
        if name == want:
            return Member(Path(path), i, name)
    raise CubeFormatError(
        f"{path}: no {want} extension (extensions found: {', '.join(names)})"
        + ("" if option is None else f"; check {option}")
    )


def _first(hdul, path, candidates):
    names = _extnames(hdul)
    for cand in candidates:
        for i, name in enumerate(names):
            if name == cand and _has_image(hdul[i]):
                return Member(Path(path), i, name)
    return None


def _single_cube(hdul, path):
    names = _extnames(hdul)
    not_flux = set(_ERR_NAMES + _VAR_NAMES + _DQ_NAMES) | {"CLIPPED"}
    cubes = [i for i, h in enumerate(hdul) if _has_cube(h) and names[i] not in not_flux]
    if len(cubes) != 1:
        return None
    return Member(Path(path), cubes[0], _extnames(hdul)[cubes[0]])


def _companion(path, token, replacement):
    """``path`` with the last ``token`` in its name replaced, or None."""
    name = path.name
    pos = name.rfind(token)
    if pos < 0:
        return None
    return path.with_name(name[:pos] + replacement + name[pos + len(token):])


def _kcwi_files(path):
    """Flux, variance and mask files of a KCWI cube named by any one of them."""
    m = re.search(r"([ivm])(cube[sd]?)(?=\.fits)", path.name)
    if m is None:
        return None
    token = m.group(0)
    return tuple(_companion(path, token, k + m.group(2)) for k in "ivm")


def detect_layout(path, *, format: str = "auto", sci=None, err=None, var=None, dq=None,
                  err_file=None, var_file=None, dq_file=None):
    """Work out the layout of the cube in ``path``.

    Parameters
    ----------
    path : str or Path
        The cube file (for KCWI any of the flux, variance or mask files).
    format : {"auto", "jwst", "muse", "eso", "kcwi", "generic"}, optional
        Force a format (default: detect it).
    sci, err, var, dq : str or int, optional
        EXTNAME or HDU index of the flux, 1-sigma error, variance and data-quality
        images (``err`` and ``var`` are exclusive). In ``err_file``/``var_file``/
        ``dq_file`` when those are given, else in ``path``.
    err_file, var_file, dq_file : str or Path, optional
        Uncertainty / variance / data quality in separate files.

    Returns
    -------
    CubeLayout

    Raises
    ------
    InputFileError, CubeFormatError, OptionError
    """
    path = _check_file(path)
    if format not in FORMATS:
        raise OptionError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if err is not None and var is not None:
        raise OptionError("--err and --var: give one of them, not both")
    if err_file is not None and var_file is not None:
        raise OptionError("--err-file and --var-file: give one of them, not both")

    if format == "kcwi" or (format == "auto" and _kcwi_files(path) is not None
                            and err_file is None and var_file is None):
        files = _kcwi_files(path)
        if files is not None and format == "auto":
            with open_fits(path) as hdul:
                instrume = str(hdul[0].header.get("INSTRUME", "")).upper()
            if "KCWI" not in instrume and not files[1].exists():
                files = None
        if files is not None or format == "kcwi":
            return _kcwi_layout(path, files, sci=sci, var=var, err=err, dq=dq,
                                var_file=var_file, err_file=err_file, dq_file=dq_file)

    with open_fits(path) as hdul:
        names = _extnames(hdul)
        fmt = format
        if fmt == "auto":
            fmt = _guess_format(hdul, names, sci=sci, err=err, var=var, two_files=(
                err_file is not None or var_file is not None))
            if fmt is None:
                raise CubeFormatError(
                    f"{path}: cube layout not recognised (extensions found: "
                    f"{', '.join(names)}); expected JWST SCI+ERR, MUSE DATA+STAT, ESO "
                    "<prefix>.DATA+<prefix>.NOISE, KCWI icubes/vcubes files, or name the "
                    "parts with --sci and --err/--var (and --err-file/--var-file)"
                )
        log.debug("%s: format %s", path, fmt)
        if fmt == "jwst":
            sci_m = _member(hdul, path, sci or "SCI", what="flux", option="--sci")
            if var is not None:
                noise_m, variance = _member(hdul, path, var, what="var", option="--var"), True
            elif err_file is None and var_file is None:
                noise_m, variance = _member(hdul, path, err or "ERR", what="err",
                                            option="--err"), False
            else:
                noise_m, variance = None, var_file is not None
            dq_m = (_member(hdul, path, dq, what="dq", option="--dq") if dq is not None
                    else _first(hdul, path, ("DQ",)))
            style = "jwst"
        elif fmt == "muse":
            sci_m = _member(hdul, path, sci or "DATA", what="flux", option="--sci")
            if err is not None:
                noise_m, variance = _member(hdul, path, err, what="err", option="--err"), False
            else:
                noise_m, variance = _member(hdul, path, var or "STAT", what="var",
                                            option="--var"), True
            dq_m = (_member(hdul, path, dq, what="dq", option="--dq") if dq is not None
                    else _first(hdul, path, ("DQ",)))
            style = "nonzero"
        elif fmt == "eso":
            prefix = _eso_prefix(hdul, names, path, sci)
            sci_m = _member(hdul, path, sci or f"{prefix}.DATA", what="flux", option="--sci")
            if var is not None:
                noise_m, variance = _member(hdul, path, var, what="var", option="--var"), True
            else:
                noise_m, variance = _member(hdul, path, err or f"{prefix}.NOISE", what="err",
                                            option="--err"), False
            dq_m = None
            if dq is not None:
                dq_m = _member(hdul, path, dq, what="dq", option="--dq")
            elif f"{prefix}.DQ" in names:
                dq_m = _member(hdul, path, f"{prefix}.DQ", what="dq", option=None)
            style = "nonzero"
        else:  # generic
            sci_m = (_member(hdul, path, sci, what="flux", option="--sci") if sci is not None
                     else _first(hdul, path, _SCI_NAMES) or _single_cube(hdul, path))
            if sci_m is None:
                raise CubeFormatError(
                    f"{path}: no flux cube found (extensions found: {', '.join(names)}); "
                    "name it with --sci")
            noise_m, variance = None, var_file is not None
            if err_file is None and var_file is None:
                if var is not None:
                    noise_m, variance = _member(hdul, path, var, what="var",
                                                option="--var"), True
                elif err is not None:
                    noise_m = _member(hdul, path, err, what="err", option="--err")
                else:
                    noise_m = _first(hdul, path, _ERR_NAMES)
                    if noise_m is None:
                        noise_m, variance = _first(hdul, path, _VAR_NAMES), True
                if noise_m is None:
                    raise CubeFormatError(
                        f"{path}: no uncertainty found next to {sci_m.extname} (extensions "
                        f"found: {', '.join(names)}); expected ERR or VAR, or give --err/--var "
                        "or --err-file/--var-file")
            dq_m = None
            if dq is not None and dq_file is None:
                dq_m = _member(hdul, path, dq, what="dq", option="--dq")
            elif dq_file is None:
                dq_m = _first(hdul, path, _DQ_NAMES)
            style = "nonzero"

    if err_file is not None or var_file is not None:
        other = _check_file(err_file if err_file is not None else var_file)
        with open_fits(other) as hdul2:
            spec = err if err_file is not None else var
            noise_m = (_member(hdul2, other, spec, what="noise",
                               option="--err" if err_file is not None else "--var")
                       if spec is not None else _single_cube(hdul2, other))
            if noise_m is None:
                raise CubeFormatError(f"{other}: expected one 3-D image (or name it with "
                                      f"{'--err' if err_file is not None else '--var'})")
    if dq_file is not None:
        other = _check_file(dq_file)
        with open_fits(other) as hdul2:
            dq_m = (_member(hdul2, other, dq, what="dq", option="--dq") if dq is not None
                    else _single_cube(hdul2, other))
            if dq_m is None:
                raise CubeFormatError(f"{other}: expected one 3-D image (or name it with --dq)")
    return CubeLayout(format=fmt, sci=sci_m, noise=noise_m, variance=variance, dq=dq_m,
                      dq_style=style)


def _guess_format(hdul, names, *, sci, err, var, two_files):
    if sci is not None and not two_files and err is None and var is None:
        name = str(sci).upper()
        if name == "SCI" and "ERR" in names:
            return "jwst"
        if name == "DATA" and "STAT" in names:
            return "muse"
        if name.endswith(".DATA") and name[:-5] + ".NOISE" in names:
            return "eso"
    if sci is not None or two_files:
        if sci is not None and str(sci).upper() == "SCI" and var is None and not two_files:
            return "jwst"
        return "generic"
    if "SCI" in names and ("ERR" in names or err is not None):
        return "jwst"
    if "DATA" in names and ("STAT" in names or var is not None):
        return "muse"
    if any(n.endswith(".DATA") for n in names):
        return "eso"
    if "SCI" in names and var is None and err is None and not any(
            n in names for n in _VAR_NAMES + _ERR_NAMES):
        # A JWST-looking file with its ERR missing: say so in JWST terms.
        raise CubeFormatError(
            f"{hdul.filename()}: no ERR extension (extensions found: {', '.join(names)})")
    has_sci = any(n in names for n in _SCI_NAMES) or _single_cube(hdul, "") is not None
    has_noise = any(n in names for n in _ERR_NAMES + _VAR_NAMES)
    if has_sci and has_noise:
        return "generic"
    if has_noise:
        raise CubeFormatError(
            f"{hdul.filename()}: no SCI extension (extensions found: {', '.join(names)})")
    if has_sci:
        raise CubeFormatError(
            f"{hdul.filename()}: one cube and no uncertainty (extensions found: "
            f"{', '.join(names)}); give --err-file or --var-file (or --err/--var)")
    return None


def _eso_prefix(hdul, names, path, sci):
    if sci is not None:
        name = str(sci).upper()
        if name.endswith(".DATA"):
            return name[: -len(".DATA")]
    filled = [n[: -len(".DATA")] for n, h in zip(names, hdul, strict=True)
              if n.endswith(".DATA") and _has_cube(h)]
    if not filled:
        raise CubeFormatError(f"{path}: every <prefix>.DATA extension is empty "
                              f"(extensions found: {', '.join(names)})")
    if len(filled) > 1:
        raise CubeFormatError(
            f"{path}: {len(filled)} filled cubes ({', '.join(p + '.DATA' for p in filled)}); "
            "choose one with --sci NAME.DATA")
    return filled[0]


def _kcwi_layout(path, files, *, sci, var, err, dq, var_file, err_file, dq_file):
    if files is None:
        if var_file is None and err_file is None:
            raise CubeFormatError(
                f"{path}: KCWI cube name without icube/vcube/mcube; give --var-file")
        files = (path, None, None)
    flux_path = files[0] if sci is None else path
    flux_path = _check_file(flux_path)
    noise_path = var_file or err_file or files[1]
    variance = err_file is None
    if noise_path is None or not Path(noise_path).exists():
        raise CubeFormatError(
            f"{flux_path}: KCWI variance file {noise_path} not found; give --var-file")
    mask_path = dq_file or files[2]
    with open_fits(flux_path) as hdul:
        sci_m = (_member(hdul, flux_path, sci, what="flux", option="--sci") if sci is not None
                 else _single_cube(hdul, flux_path))
        if sci_m is None:
            raise CubeFormatError(f"{flux_path}: expected one 3-D flux image")
    with open_fits(noise_path) as hdul:
        spec = var if variance else err
        noise_m = (_member(hdul, noise_path, spec, what="var", option="--var")
                   if spec is not None else _single_cube(hdul, noise_path))
        if noise_m is None:
            raise CubeFormatError(f"{noise_path}: expected one 3-D variance image")
    dq_m = None
    if mask_path is not None and Path(mask_path).exists():
        with open_fits(mask_path) as hdul:
            dq_m = (_member(hdul, mask_path, dq, what="dq", option="--dq")
                    if dq is not None else _single_cube(hdul, mask_path))
    elif dq_file is not None:
        _check_file(dq_file)
    return CubeLayout(format="kcwi", sci=sci_m, noise=noise_m, variance=variance, dq=dq_m,
                      dq_style="kcwi", zero_padding=True)


# ----------------------------------------------------------------------------- reading

@dataclass
class _Image:
    """Where an image's bytes are, and how to turn them into values."""

    member: Member
    shape: tuple
    raw: np.dtype
    offset: int
    bscale: float = 1.0
    bzero: float = 0.0
    mappable: bool = True
    cached: np.ndarray | None = field(default=None, repr=False)

    @property
    def plane_bytes(self):
        return int(np.prod(self.shape[1:])) * self.raw.itemsize

    @property
    def unsigned_offset(self):
        """True for the FITS unsigned-integer convention (BZERO = 2**(bits-1))."""
        return (self.raw.kind == "i" and self.bscale == 1
                and self.bzero == 2 ** (8 * self.raw.itemsize - 1))

    @property
    def scaled(self):
        return (self.bscale != 1 or self.bzero != 0) and not self.unsigned_offset

    @property
    def dtype(self):
        """dtype of the values (after FITS scaling)."""
        if self.unsigned_offset:
            return np.dtype(f"u{self.raw.itemsize}")
        if self.scaled:
            return np.dtype("f8") if self.raw.itemsize > 2 else np.dtype("f4")
        return self.raw.newbyteorder("=")


def _image(hdul, member):
    hdu = hdul[member.index]
    header = hdu.header
    if isinstance(hdu, fits.CompImageHDU):
        bitpix = header.get("ZBITPIX")
        naxis = header.get("ZNAXIS", 0)
        axes = [header.get(f"ZNAXIS{i}") for i in range(naxis, 0, -1)]
    else:
        bitpix = header.get("BITPIX")
        naxis = header.get("NAXIS", 0)
        axes = [header.get(f"NAXIS{i}") for i in range(naxis, 0, -1)]
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        raise CubeFormatError(f"{member.label}: expected an image, found a table")
    if naxis == 0:
        raise CubeFormatError(f"{member.label}: the extension has no data, expected a 3-D cube")
    if bitpix not in BITPIX_DTYPES:
        raise CubeFormatError(f"{member.label}: unsupported BITPIX {bitpix}")
    shape = tuple(int(a) for a in axes)
    raw = BITPIX_DTYPES[bitpix]
    info = hdu.fileinfo()
    try:
        bscale, bzero = float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0))
    except (TypeError, ValueError):
        raise CubeFormatError(f"{member.label}: BSCALE/BZERO are not numbers "
                              f"({header.get('BSCALE')!r}, {header.get('BZERO')!r})") from None
    if not (np.isfinite(bscale) and np.isfinite(bzero) and bscale != 0):
        raise CubeFormatError(f"{member.label}: unusable BSCALE {bscale!r} / BZERO {bzero!r}")
    image = _Image(member, shape, raw, int(info["datLoc"]) if info else 0, bscale, bzero)
    size = member.path.stat().st_size
    need = image.offset + int(np.prod(shape)) * raw.itemsize
    compressed = isinstance(hdu, fits.CompImageHDU) or _is_compressed(member.path)
    image.mappable = not compressed
    if not compressed and need > size:
        raise CubeFormatError(
            f"{member.label}: data cannot be read, the file may be truncated "
            f"({size} bytes, the header needs {need})")
    return image


def _is_compressed(path):
    with open(path, "rb") as f:
        return f.read(6) != b"SIMPLE"


def _read_planes(image, start, stop):
    """Values of planes ``start:stop`` of ``image``, native byte order."""
    if not image.mappable:
        if image.cached is None:
            with fits.open(image.member.path, memmap=False) as hdul:
                try:
                    data = hdul[image.member.index].data
                except Exception as exc:
                    raise CubeFormatError(f"{image.member.label}: data cannot be read, the "
                                          f"file may be truncated ({exc})") from None
                image.cached = _native(np.array(data))
        return image.cached[start:stop]
    n = stop - start
    if n <= 0:
        return np.empty((0, *image.shape[1:]), dtype=image.dtype)
    # A memory map of just this block, released on return, so that resident memory
    # stays bounded by the block however large the file.
    mm = np.memmap(image.member.path, dtype=image.raw, mode="r",
                   offset=image.offset + start * image.plane_bytes,
                   shape=(n, *image.shape[1:]))
    try:
        raw = np.array(mm, dtype=image.raw.newbyteorder("="))
    finally:
        del mm
    if image.unsigned_offset:
        return raw.view(image.dtype) ^ image.dtype.type(image.bzero)
    if image.scaled:
        # Values beyond the float range become inf (excluded as non-finite data).
        with np.errstate(over="ignore", invalid="ignore"):
            return (raw * image.bscale + image.bzero).astype(image.dtype)
    return raw


def _native(array):
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    return array


class CubeSource:
    """A cube on disk, read block of planes by block of planes.

    Parameters
    ----------
    layout : CubeLayout

    Attributes
    ----------
    shape : tuple
        (nw, ny, nx).
    dtype : numpy dtype
        Of the flux values.
    header : `~astropy.io.fits.Header`
        Copy of the flux HDU's header.
    wavelength : ndarray
        Microns, every plane.
    air : bool
    wcs : `~astropy.wcs.WCS`
    """

    def __init__(self, layout):
        from .cube import read_wavelength

        self.layout = layout
        self.path = layout.sci.path
        self._images = {}
        with open_fits(layout.sci.path) as hdul:
            self._images["sci"] = _image(hdul, layout.sci)
        for role in ("noise", "dq"):
            member = getattr(layout, role)
            if member is None:
                continue
            with open_fits(member.path) as hdul:
                self._images[role] = _image(hdul, member)
        self._check()
        with open_fits(layout.sci.path) as hdul:
            self.primary_header = hdul[0].header.copy()
            self.header = hdul[layout.sci.index].header.copy()
            header = _spectral_units(self.header, layout.sci)
            self.wavelength, self.air, self.wcs = read_wavelength(
                header, hdul, self.shape[0], layout.sci.label)

    def _check(self):
        sci = self._images["sci"]
        for role, image in self._images.items():
            name = image.member.label
            if len(image.shape) != 3:
                raise CubeFormatError(f"{name}: expected a 3-D cube (wavelength, y, x), found "
                                      f"{len(image.shape)}-D shape {image.shape}")
            if role != "dq" and image.dtype.kind != "f":
                raise CubeFormatError(f"{name}: expected floating-point data, found "
                                      f"{image.dtype}")
            if role == "dq" and image.dtype.kind not in "iu":
                raise CubeFormatError(f"{name}: expected integer data quality, found "
                                      f"{image.dtype}")
            if image.shape != sci.shape:
                raise CubeFormatError(f"{name}: shape {image.shape} differs from "
                                      f"{sci.member.extname} {sci.shape}")

    @property
    def shape(self):
        return self._images["sci"].shape

    @property
    def dtype(self):
        return self._images["sci"].dtype

    @property
    def name(self):
        return self.path.name

    @property
    def nbytes(self):
        """Bytes of the flux and uncertainty images."""
        return sum(int(np.prod(self._images[r].shape)) * self._images[r].raw.itemsize
                   for r in ("sci", "noise"))

    @property
    def celestial_wcs(self):
        return None if self.wcs is None else self.wcs.celestial

    def image(self, role):
        """Byte location of the ``sci``, ``noise`` or ``dq`` image (None when absent)."""
        return self._images.get(role)

    def read(self, start=0, stop=None):
        """Planes ``start:stop`` as a :class:`Block`."""
        nw = self.shape[0]
        stop = nw if stop is None else min(int(stop), nw)
        start = max(int(start), 0)
        sci = _read_planes(self._images["sci"], start, stop)
        noise = _read_planes(self._images["noise"], start, stop)
        nodata = np.zeros(sci.shape, dtype=bool)
        if self.layout.variance:
            bad = ~(noise >= 0)  # NaN or negative variance
            nodata |= bad
            with np.errstate(invalid="ignore"):
                err = np.sqrt(noise)
        else:
            err = noise
        if self.layout.zero_padding:
            nodata |= (sci == 0) & (noise == 0)
        dq = None
        if "dq" in self._images:
            raw_dq = _read_planes(self._images["dq"], start, stop)
            style = self.layout.dq_style
            if style == "jwst":
                dq = raw_dq.astype(np.uint32, copy=False)
                nodata |= (dq & 1) != 0
            elif style == "kcwi":
                nodata |= (raw_dq.astype(np.int64) & _KCWI_NODATA) != 0
            else:
                nodata |= raw_dq != 0
        # ERR policy (docs/trust.md): finite flux with zero, negative or NaN uncertainty
        # is excluded from the statistics and never flagged, in memory and out of core
        # alike; counted per plane so that re-reading planes does not count them twice.
        from .cube import bad_uncertainty

        bad_err = bad_uncertainty(sci, err, nodata)
        nodata |= bad_err
        if getattr(self, "_bad_err", None) is None:
            self._bad_err = np.zeros(self.shape[0], dtype=np.int64)
        self._bad_err[start:stop] = bad_err.sum(axis=(1, 2))
        return Block(start, stop, sci, err, dq, nodata)

    @property
    def n_bad_err(self):
        """Voxels with finite flux but zero, negative or NaN uncertainty, in the planes
        read so far (excluded as no data; see :func:`layerclip.io.cube.bad_uncertainty`)."""
        bad = getattr(self, "_bad_err", None)
        return 0 if bad is None else int(bad.sum())

    def blocks(self, block_planes, *, halo=0):
        """Yield ``(block, own)``: planes read with ``halo`` extra on each side, and the
        slice of the block's own planes within it."""
        nw = self.shape[0]
        step = max(int(block_planes), 1)
        for start in range(0, nw, step):
            stop = min(start + step, nw)
            lo, hi = max(start - halo, 0), min(stop + halo, nw)
            yield self.read(lo, hi), slice(start - lo, start - lo + (stop - start))

    def to_cube(self):
        """Read the whole cube into a :class:`~layerclip.io.cube.Cube`."""
        from .cube import Cube

        block = self.read()
        if not np.isfinite(block.sci).any():
            raise CubeFormatError(f"{self.layout.sci.label}: every value is NaN or infinite")
        nodata = block.nodata if block.nodata.any() else None
        if self.layout.dq_style == "jwst" and nodata is not None and block.dq is not None:
            # JWST DO_NOT_USE is carried by dq itself
            extra = nodata & ((block.dq & 1) == 0)
            nodata = extra if extra.any() else None
        return Cube(sci=block.sci, err=block.err, dq=block.dq, wavelength=self.wavelength,
                    header=self.header, wcs=self.wcs, air=self.air, path=self.path,
                    layout=self.layout, nodata=nodata)


def _spectral_units(header, member):
    """A header copy with CUNIT3 filled in when it is missing (values decide the unit)."""
    ctype = str(header.get("CTYPE3", "")).upper()
    if "CUNIT3" in header or not ctype.startswith(("WAVE", "AWAV")) or ctype.endswith("-TAB"):
        return header
    crval = header.get("CRVAL3")
    if not isinstance(crval, (int, float)):
        return header
    unit = "Angstrom" if crval >= 1000 else "um" if 0.05 <= crval <= 1000 else None
    if unit is None:
        return header
    warnings.warn(f"{member.label}: no CUNIT3; CRVAL3={crval:g} read as {unit}",
                  LayerclipWarning, stacklevel=4)
    header = header.copy()
    header["CUNIT3"] = unit
    return header


def open_cube(path, *, format="auto", sci=None, err=None, var=None, dq=None, err_file=None,
              var_file=None, dq_file=None):
    """Open a cube file for block-wise reading (see :func:`detect_layout` for options).

    Returns
    -------
    CubeSource
    """
    layout = detect_layout(path, format=format, sci=sci, err=err, var=var, dq=dq,
                           err_file=err_file, var_file=var_file, dq_file=dq_file)
    return CubeSource(layout)
