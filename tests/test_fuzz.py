"""Fuzzing the reader (hypothesis): corrupted headers and truncated files.

Whatever the damage, :func:`layerclip.io.read_cube` either returns a usable cube or
raises a :class:`~layerclip.errors.LayerclipError`; no exception from inside a
dependency and no warning other than :class:`~layerclip.errors.LayerclipWarning`
gets out.
"""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerclip.errors import LayerclipError, LayerclipWarning
from layerclip.io import read_cube

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

KEYS = ["SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTNAME",
        "CTYPE3", "CUNIT3", "CRVAL3", "CDELT3", "CRPIX3", "PC3_3", "CTYPE1", "CRVAL1",
        "BSCALE", "BZERO", "WCSAXES", "PCOUNT", "GCOUNT", "END"]
PLAUSIBLE = ["0", "-1", "3", "8", "16", "-32", "-64", "64", "1E300", "NAN", "-INF",
             "T", "F", "''", "'WAVE'", "'AWAV'", "'WAVE-TAB'", "'FREQ'", "'RA---TAN'",
             "'um'", "'Angstrom'", "'furlong'", "'s'", "'SCI'", "'ERR'", "'DQ'",
             "'IMAGE'", "'BINTABLE'", "1.0", "0.0", "-0.001", "2.5E-10"]
VALUES = st.one_of(
    st.integers(-2**40, 2**40).map(str),
    st.sampled_from(PLAUSIBLE),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
)


def card(key, value):
    """An 80-character header card ``key = value`` (``END`` alone)."""
    return (f"{key:<8}= {value:>20}" if key != "END" else "END").ljust(80)[:80]


def write_valid_cube(path):
    """A small valid SCI/ERR/DQ cube; returns its bytes and each HDU's header span."""
    rng = np.random.default_rng(3)
    shape = (12, 5, 6)
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CTYPE3": "WAVE",
                          "CUNIT1": "deg", "CUNIT2": "deg", "CUNIT3": "um",
                          "CRVAL1": 10.0, "CRVAL2": -5.0, "CRVAL3": 1.5,
                          "CDELT1": -1e-5, "CDELT2": 1e-5, "CDELT3": 0.001,
                          "CRPIX1": 3.0, "CRPIX2": 3.0, "CRPIX3": 1.0})
    sci = rng.normal(size=shape).astype(np.float32)
    hdul = fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(sci, header=header, name="SCI"),
        fits.ImageHDU(np.ones(shape, np.float32), name="ERR"),
        fits.ImageHDU(np.zeros(shape, np.uint32), name="DQ"),
    ])
    hdul.writeto(path)
    with fits.open(path) as h:
        headers = [(hdu.fileinfo()["hdrLoc"], hdu.fileinfo()["datLoc"]) for hdu in h]
    assert read_cube(path).shape == shape
    return path.read_bytes(), headers


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "valid_s3d.fits"
    raw, headers = write_valid_cube(path)
    return path, raw, headers


def _read(path):
    """read_cube under the strictest warning filter; only project errors may come out."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", LayerclipWarning)
        try:
            cube = read_cube(path)
        except LayerclipError as exc:
            assert str(exc) and "\n" not in str(exc)
            return None
    assert cube.sci.ndim == 3 and cube.sci.shape == cube.err.shape
    assert cube.sci.dtype.kind == "f" and cube.wavelength.shape == (cube.sci.shape[0],)
    return cube


@SETTINGS
@given(data=st.data())
def test_corrupted_header_bytes(valid_file, tmp_path, data):
    path, raw, headers = valid_file
    raw = bytearray(raw)
    n = data.draw(st.integers(1, 12))
    for _ in range(n):
        lo, hi = data.draw(st.sampled_from(headers))
        pos = data.draw(st.integers(lo, hi - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    bad = tmp_path / "bad.fits"
    bad.write_bytes(bytes(raw))
    _read(bad)


@SETTINGS
@given(data=st.data())
def test_corrupted_header_cards(valid_file, tmp_path, data):
    """Whole cards rewritten with plausible-looking but wrong values."""
    path, raw, headers = valid_file
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        lo, hi = data.draw(st.sampled_from(headers))
        key = data.draw(st.sampled_from(KEYS))
        value = data.draw(VALUES)
        text = bytes(raw[lo:hi])
        at = text.find(f"{key:<8}".encode())
        if at < 0 or at % 80:
            at = data.draw(st.integers(0, (hi - lo) // 80 - 1)) * 80
        raw[lo + at:lo + at + 80] = card(key, value).encode("ascii")
    bad = tmp_path / "bad.fits"
    bad.write_bytes(bytes(raw))
    _read(bad)


@SETTINGS
@given(data=st.data())
def test_truncated_files(valid_file, tmp_path, data):
    path, raw, headers = valid_file
    cut = data.draw(st.integers(0, len(raw) - 1))
    bad = tmp_path / "cut.fits"
    bad.write_bytes(raw[:cut])
    assert _read(bad) is None  # any truncation loses data: always refused


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(extra=st.binary(min_size=1, max_size=6000))
def test_garbage_appended_or_alone(valid_file, tmp_path, extra):
    path, raw, headers = valid_file
    bad = tmp_path / "extra.fits"
    bad.write_bytes(raw + extra)
    _read(bad)
    bad.write_bytes(extra)
    assert _read(bad) is None
