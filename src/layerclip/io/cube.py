"""Reading IFU cubes (JWST level-3 ``*_s3d.fits`` layout) into arrays."""

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..errors import CubeFormatError, InputFileError, WavelengthError

__all__ = ["Cube", "read_cube", "DO_NOT_USE", "OUTLIER", "NON_SCIENCE", "native"]

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
        File the cube was read from.
    """

    sci: np.ndarray
    err: np.ndarray
    dq: np.ndarray | None
    wavelength: np.ndarray
    header: fits.Header = field(default_factory=fits.Header)
    wcs: WCS | None = None
    air: bool = False
    path: Path | None = None

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
        return bad

    @property
    def celestial_wcs(self):
        return None if self.wcs is None else self.wcs.celestial

    @property
    def bunit(self):
        return self.header.get("BUNIT", "")


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


def read_wavelength(header, hdul, n_planes, path="<cube>"):
    """Wavelength of every plane in microns from a 3-D WCS, and whether it is air.

    Handles linear axes (CRVAL3/CDELT3, CD3_3, PC3_3) and the tabular ``WAVE-TAB``
    form of JWST cubes (read through ``hdul``), in any wavelength unit astropy knows.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, fobj=hdul)
        except Exception as exc:
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


def read_cube(path, *, sci="SCI", err="ERR", dq="DQ"):
    """Read a JWST level-3 IFU cube.

    Parameters
    ----------
    path : str or Path
        A ``*_s3d.fits`` file (SCI, ERR, DQ, WMAP, ASDF ... extensions).
    sci, err, dq : str, optional
        EXTNAMEs of the flux, uncertainty and data-quality extensions. DQ is
        optional in the file.

    Returns
    -------
    Cube

    Raises
    ------
    InputFileError, CubeFormatError, WavelengthError
        With a one-line message naming the file and extension.
    """
    path = Path(path)
    with _open(path) as hdul:
        sci_hdu = _find(hdul, sci.upper(), path)
        err_hdu = _find(hdul, err.upper(), path)
        dq_hdu = _find(hdul, dq.upper(), path, required=False)
        sci_data = _image_data(sci_hdu, path, sci)
        err_data = _image_data(err_hdu, path, err)
        for name, data in ((sci, sci_data), (err, err_data)):
            if data.ndim != 3:
                raise CubeFormatError(
                    f"{path}[{name}]: expected a 3-D cube (wavelength, y, x), "
                    f"found {data.ndim}-D shape {data.shape}"
                )
            if data.dtype.kind != "f":
                raise CubeFormatError(
                    f"{path}[{name}]: expected floating-point data, found {data.dtype}"
                )
        if sci_data.shape != err_data.shape:
            raise CubeFormatError(
                f"{path}: {sci} shape {sci_data.shape} and {err} shape {err_data.shape} differ"
            )
        dq_data = None
        if dq_hdu is not None:
            dq_data = _image_data(dq_hdu, path, dq)
            if dq_data.shape != sci_data.shape:
                raise CubeFormatError(
                    f"{path}[{dq}]: shape {dq_data.shape} differs from {sci} {sci_data.shape}"
                )
            dq_data = native(dq_data).astype(np.uint32, copy=False)
        sci_data = native(sci_data)
        err_data = native(err_data)
        if not np.isfinite(sci_data).any():
            raise CubeFormatError(f"{path}[{sci}]: every value is NaN or infinite")
        header = sci_hdu.header.copy()
        wave, air, wcs = read_wavelength(header, hdul, sci_data.shape[0], path)
    return Cube(
        sci=sci_data, err=err_data, dq=dq_data, wavelength=wave, header=header,
        wcs=wcs, air=air, path=path,
    )
