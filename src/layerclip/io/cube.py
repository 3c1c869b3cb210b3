"""Reading IFU cubes into arrays.

The file layout (JWST s3d, MUSE, ESO/KMOS, KCWI, generic) is detected by
:mod:`layerclip.io.formats`; :func:`read_cube` reads a whole cube through it and
:func:`layerclip.io.formats.open_cube` gives block-wise access for cubes larger
than memory.
"""

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..errors import BadUncertaintyWarning, CubeFormatError, InputFileError, WavelengthError

__all__ = ["Cube", "read_cube", "DO_NOT_USE", "OUTLIER", "NON_SCIENCE", "native",
           "bad_uncertainty", "warn_bad_uncertainty", "prescan_fits"]

# DQ bits, as in stdatamodels.jwst.datamodels.dqflags
DO_NOT_USE = 1
OUTLIER = 16
NON_SCIENCE = 512


def native(array):
    """Return ``array`` in native byte order (FITS data are big-endian on disk)."""
    array = np.asarray(array)
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def bad_uncertainty(sci, err, excluded=None):
    """Voxels with finite flux whose uncertainty is zero, negative or not finite.

    The ERR policy: such voxels are excluded from the statistics and never
    flagged (a zero or NaN error says the pipeline could not measure the voxel,
    and a negative one is meaningless). Voxels already ``excluded`` (no data) are
    not counted.

    Parameters
    ----------
    sci, err : ndarray
        Flux and 1-sigma uncertainty, same shape.
    excluded : ndarray of bool, optional
        Voxels already known to hold no data.

    Returns
    -------
    ndarray of bool
        True where the uncertainty is unusable but the flux is finite.
    """
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(sci) & ~((err > 0) & np.isfinite(err))
    if excluded is not None:
        bad &= ~excluded
    return bad


def warn_bad_uncertainty(n, name):
    """Warn (:class:`~layerclip.errors.BadUncertaintyWarning`) about ``n`` bad-ERR voxels."""
    if n:
        warnings.warn(f"{name}: {n} voxels with finite flux have zero, negative or NaN "
                      "uncertainty; they are excluded from the statistics and never flagged",
                      BadUncertaintyWarning, stacklevel=3)


@dataclass
class Cube:
    """An IFU cube held as arrays in (wavelength, y, x) order.

    Attributes
    ----------
    sci, err : ndarray
        Flux and its 1-sigma uncertainty, floating point, native byte order.
    dq : ndarray or None
        Data-quality bit flags (uint32), if the file has them.
    wavelength : ndarray
        Wavelength of every plane in microns.
    header : `~astropy.io.fits.Header`
        Header of the SCI extension.
    wcs : `~astropy.wcs.WCS` or None
        The cube's 3-D WCS.
    air : bool
        True when the spectral axis is in air wavelengths (CTYPE3 AWAV).
    path : Path or None
        File the cube was read from (for multi-file formats, the flux file).
    layout : `~layerclip.io.formats.CubeLayout` or None
        Where the parts of the cube live in the file(s), and what they mean.
    nodata : ndarray of bool or None
        Voxels the format marks as holding no data, beyond NaN flux and JWST DQ
        DO_NOT_USE (MUSE/generic DQ, KCWI mask 128 and zero padding, negative
        variance).
    """

    sci: np.ndarray
    err: np.ndarray
    dq: np.ndarray | None
    wavelength: np.ndarray
    header: fits.Header = field(default_factory=fits.Header)
    wcs: WCS | None = None
    air: bool = False
    path: Path | None = None
    layout: object = None
    nodata: np.ndarray | None = None

    @property
    def shape(self):
        return self.sci.shape

    @property
    def name(self):
        return self.path.name if self.path is not None else "<cube>"

    @property
    def excluded(self):
        """Boolean cube, True where a voxel holds no usable data.

        NaN/inf SCI values and DQ DO_NOT_USE voxels are excluded data, never
        "flagged by us".
        """
        bad = ~np.isfinite(self.sci)
        if self.dq is not None:
            bad |= (self.dq & DO_NOT_USE) != 0
        if self.nodata is not None:
            bad |= self.nodata
        return bad

    @property
    def bad_err(self):
        """Boolean cube, True where SCI is usable but ERR is zero, negative or NaN
        (see :func:`bad_uncertainty`)."""
        return bad_uncertainty(self.sci, self.err, self.excluded)

    @property
    def celestial_wcs(self):
        return None if self.wcs is None else self.wcs.celestial

    @property
    def bunit(self):
        return self.header.get("BUNIT", "")


_BLOCK = 2880
_BITPIX = (8, 16, 32, 64, -32, -64)
_STRUCTURAL = re.compile(rb"^(BITPIX|NAXIS\d{0,3}|PCOUNT|GCOUNT|BSCALE|BZERO|XTENSION)$")
# Largest header accepted (cards): real IFU headers have a few thousand at most.
_MAX_HEADER_BLOCKS = 2000


def _card_number(raw, key, path, index, *, kind=int):
    text = raw.split(b"/", 1)[0].strip().decode("ascii", "replace")
    try:
        value = kind(text) if kind is int else float(text.replace("D", "E"))
    except ValueError:
        raise InputFileError(f"{path}: corrupt FITS header in HDU #{index}: {key} = "
                             f"{text[:30]!r}, expected a number") from None
    if kind is float and not np.isfinite(value):
        raise InputFileError(f"{path}: corrupt FITS header in HDU #{index}: {key} = {text}")
    return value


def prescan_fits(path):
    """Check the structural cards of every HDU before astropy parses the file.

    Walks the headers of an uncompressed FITS file block by block and refuses
    (:class:`~layerclip.errors.InputFileError`) values astropy would choke on,
    loop over for a very long time or silently misread: ``NAXIS`` outside 0..999,
    missing or negative ``NAXISn``, an unknown ``BITPIX``, non-numeric or zero
    ``BSCALE``/``BZERO``, a header without ``END``, or a data part larger than the
    file. Compressed files (not starting with ``SIMPLE``) are left to astropy.
    """
    path = Path(path)
    size = path.stat().st_size
    offset, index = 0, 0
    with open(path, "rb") as f:
        if f.read(6) != b"SIMPLE":
            return
        while offset < size:
            cards, blocks, ended = {}, 0, False
            while not ended:
                f.seek(offset)
                block = f.read(_BLOCK)
                if len(block) < _BLOCK:
                    raise InputFileError(f"{path}: truncated FITS file (the header of HDU "
                                         f"#{index} ends after {len(block)} bytes)")
                offset += _BLOCK
                blocks += 1
                for i in range(0, _BLOCK, 80):
                    key = block[i:i + 8].rstrip()
                    if key == b"END":
                        ended = True
                        break
                    if block[i + 8:i + 10] == b"= ":
                        cards.setdefault(key.decode("ascii", "replace"), block[i + 10:i + 80])
                    elif _STRUCTURAL.match(key):
                        # astropy would still read it, as a string, and fail deep inside
                        raise InputFileError(
                            f"{path}: corrupt FITS header in HDU #{index}: card "
                            f"{key.decode('ascii', 'replace')} has no '= ' value indicator")
                if blocks > _MAX_HEADER_BLOCKS:
                    raise InputFileError(f"{path}: corrupt FITS file (no END card in the "
                                         f"first {_MAX_HEADER_BLOCKS} header blocks of HDU "
                                         f"#{index})")
            need = {"BITPIX", "NAXIS"}
            if not need <= cards.keys():
                missing = ", ".join(sorted(need - cards.keys()))
                raise InputFileError(f"{path}: corrupt FITS header in HDU #{index}: no {missing}")
            bitpix = _card_number(cards["BITPIX"], "BITPIX", path, index)
            naxis = _card_number(cards["NAXIS"], "NAXIS", path, index)
            if bitpix not in _BITPIX:
                raise InputFileError(f"{path}: corrupt FITS header in HDU #{index}: BITPIX = "
                                     f"{bitpix}, expected one of {_BITPIX}")
            if not 0 <= naxis <= 999:
                raise InputFileError(f"{path}: corrupt FITS header in HDU #{index}: NAXIS = "
                                     f"{naxis}, expected 0..999")
            axes = []
            for k in range(1, naxis + 1):
                key = f"NAXIS{k}"
                if key not in cards:
                    raise InputFileError(f"{path}: corrupt FITS header in HDU #{index}: "
                                         f"NAXIS = {naxis} but no {key}")
                n = _card_number(cards[key], key, path, index)
                if n < 0:
                    raise InputFileError(f"{path}: corrupt FITS header in HDU #{index}: "
                                         f"{key} = {n}, expected 0 or more")
                axes.append(n)
            pcount = _card_number(cards["PCOUNT"], "PCOUNT", path, index) \
                if "PCOUNT" in cards else 0
            gcount = _card_number(cards["GCOUNT"], "GCOUNT", path, index) \
                if "GCOUNT" in cards else 1
            if pcount < 0 or gcount < 0:
                raise InputFileError(f"{path}: corrupt FITS header in HDU #{index}: "
                                     f"PCOUNT = {pcount}, GCOUNT = {gcount}")
            for key in ("BSCALE", "BZERO"):
                if key in cards:
                    value = _card_number(cards[key], key, path, index, kind=float)
                    if key == "BSCALE" and value == 0:
                        raise InputFileError(f"{path}: corrupt FITS header in HDU #{index}: "
                                             "BSCALE = 0")
            if axes and axes[0] == 0 and naxis > 1:  # random groups
                axes = axes[1:]
            elements = int(np.prod(axes, dtype=object)) if axes else 0
            data = abs(bitpix) // 8 * gcount * (pcount + elements)
            offset += -(-data // _BLOCK) * _BLOCK
            if offset - _BLOCK >= size and data:
                raise InputFileError(f"{path}: truncated FITS file (HDU #{index} needs "
                                     f"{offset} bytes, the file has {size})")
            index += 1
            f.seek(offset)
            if offset < size and f.read(8) != b"XTENSION":
                f.seek(offset)
                rest = f.read(min(size - offset, 64 * _BLOCK))
                if rest.strip(b"\0 "):
                    raise InputFileError(
                        f"{path}: corrupt FITS file ({size - offset} bytes after HDU "
                        f"#{index - 1} that do not start with XTENSION)")
                return  # zero or blank padding after the last HDU


def _open(path):
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a folder, expected a FITS file")
    try:
        hdul = fits.open(path, memmap=False)
        for hdu in hdul:
            hdu.header  # noqa: B018 (forces every header to be parsed now)
    except OSError as exc:
        raise InputFileError(f"{path}: not a readable FITS file ({exc})") from None
    except Exception as exc:  # astropy raises many types on corrupt files
        raise InputFileError(f"{path}: corrupt FITS file ({type(exc).__name__}: {exc})") from None
    return hdul


def _find(hdul, extname, path, *, required=True):
    for hdu in hdul:
        if hdu.header.get("EXTNAME", "").strip().upper() == extname:
            return hdu
    if required:
        names = [h.header.get("EXTNAME", f"#{i}") for i, h in enumerate(hdul)]
        raise CubeFormatError(
            f"{path}: no {extname} extension (extensions found: {', '.join(map(str, names))})"
        )
    return None


def _image_data(hdu, path, extname):
    try:
        data = hdu.data
    except Exception as exc:
        raise CubeFormatError(
            f"{path}[{extname}]: data cannot be read, the file may be truncated ({exc})"
        ) from None
    if data is None:
        raise CubeFormatError(f"{path}[{extname}]: the extension has no data, expected a 3-D cube")
    if not isinstance(data, np.ndarray) or data.dtype.fields is not None:
        raise CubeFormatError(f"{path}[{extname}]: expected an image, found a table")
    return data


# CTYPE3 prefixes of spectral axes (wavelength, frequency, energy, velocity ...).
_SPECTRAL_CTYPES = ("WAVE", "AWAV", "FREQ", "ENER", "WAVN", "VRAD", "VOPT", "ZOPT", "VELO",
                    "BETA")


def _check_spectral_unit(header, path):
    """Refuse a CUNIT3 that is not a unit of the spectral axis CTYPE3 names."""
    ctype = str(header.get("CTYPE3", "")).upper()
    cunit = header.get("CUNIT3")
    if cunit is None or not ctype.startswith(("WAVE", "AWAV")):
        return
    try:
        unit = u.Unit(str(cunit).strip(), format="fits")
    except ValueError:
        try:
            unit = u.Unit(str(cunit).strip())
        except ValueError:
            unit = None
    if unit is None or not unit.is_equivalent(u.um):
        raise WavelengthError(
            f"{path}: wavelength unit CUNIT3 {cunit!r} not understood for CTYPE3 "
            f"{ctype!r}; expected a length such as 'um', 'nm', 'Angstrom' or 'm'")


# The FITS standard's largest axis count (NAXIS and WCSAXES).
_MAX_AXES = 999


def _check_wcs_axes(header, path):
    """Refuse a WCSAXES that is not an axis count: wcslib builds its arrays from
    it, and a corrupted card asking for billions of axes crashed the process (a
    segmentation fault, found by ``tests/test_fuzz.py``)."""
    if "WCSAXES" not in header:
        return
    value = header["WCSAXES"]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_AXES:
        raise WavelengthError(
            f"{path}: WCSAXES = {value!r} is not a number of WCS axes; expected an "
            f"integer from 1 to {_MAX_AXES} (3 for a cube)")


def read_wavelength(header, hdul, n_planes, path="<cube>"):
    """Wavelength of every plane in microns from a 3-D WCS, and whether it is air.

    Handles linear axes (CRVAL3/CDELT3, CD3_3, PC3_3) and the tabular ``WAVE-TAB``
    form of JWST cubes (read through ``hdul``), in any wavelength unit astropy knows.
    """
    _check_spectral_unit(header, path)
    _check_wcs_axes(header, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, fobj=hdul)
        except Exception as exc:
            ctype3 = str(header.get("CTYPE3", "")).upper()
            if not ctype3.startswith(_SPECTRAL_CTYPES):
                raise WavelengthError(
                    f"{path}: the WCS has no spectral axis (CTYPE3 {header.get('CTYPE3')!r}); "
                    "expected WAVE, AWAV or WAVE-TAB") from None
            raise WavelengthError(f"{path}: the WCS cannot be read ({exc})") from None
    if wcs.naxis != 3 or wcs.wcs.spec < 0:
        raise WavelengthError(
            f"{path}: the WCS has no spectral axis (CTYPE3 {header.get('CTYPE3')!r}); "
            "expected WAVE, AWAV or WAVE-TAB"
        )
    if wcs.wcs.spec != 2:
        raise WavelengthError(
            f"{path}: the spectral axis is FITS axis {wcs.wcs.spec + 1}, expected axis 3"
        )
    ctype = wcs.wcs.ctype[2].upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            world = wcs.spectral.pixel_to_world(np.arange(n_planes))
        wave = u.Quantity(world).to_value(u.um, equivalencies=u.spectral())
    except Exception as exc:
        raise WavelengthError(
            f"{path}: wavelength axis not understood (CTYPE3 {ctype!r}, "
            f"CUNIT3 {header.get('CUNIT3')!r}): {exc}"
        ) from None
    wave = np.asarray(wave, dtype=float)
    if not np.all(np.isfinite(wave)):
        raise WavelengthError(f"{path}: the wavelength axis gives non-finite values")
    return wave, ctype.startswith("AWAV"), wcs


def read_cube(path, *, format="auto", sci=None, err=None, var=None, dq=None, err_file=None,
              var_file=None, dq_file=None):
    """Read an IFU cube, whatever its layout.

    Parameters
    ----------
    path : str or Path
        The cube file: JWST ``*_s3d.fits`` (SCI, ERR, DQ ...), MUSE (DATA, STAT),
        ESO ``<prefix>.DATA``/``<prefix>.NOISE``, a KCWI ``*icubes.fits`` (variance
        and mask read from the matching ``vcubes``/``mcubes`` files), or a generic
        SCI+ERR / SCI+VAR file.
    format : {"auto", "jwst", "muse", "eso", "kcwi", "generic"}, optional
        Force the layout (default: detect it).
    sci, err, var, dq : str or int, optional
        EXTNAME or HDU index of the flux, 1-sigma error, variance and data-quality
        images, overriding the format's defaults. DQ is optional in the file.
    err_file, var_file, dq_file : str or Path, optional
        Uncertainty, variance or data quality in separate files.

    Returns
    -------
    Cube
        ``err`` is always a 1-sigma error (the square root of a variance file).

    Raises
    ------
    InputFileError, CubeFormatError, WavelengthError, OptionError
        With a one-line message naming the file and extension.
    """
    from .formats import open_cube

    source = open_cube(path, format=format, sci=sci, err=err, var=var, dq=dq,
                       err_file=err_file, var_file=var_file, dq_file=dq_file)
    return source.to_cube()
