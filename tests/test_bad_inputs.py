"""The bad-input matrix: every refusal is one line naming the input, exit code 2 from the
command line, a specific exception class from the library, no output left behind and the
input untouched. (The table in docs/trust.md lists the same cases.)"""

import os
import shutil
import warnings

import numpy as np
import pytest
from astropy.io import fits

from layerclip.cli import main
from layerclip.errors import (
    BadUncertaintyWarning,
    CubeFormatError,
    EmptyTargetError,
    InputFileError,
    LayerclipError,
    LayerMapError,
    OptionError,
    OutputError,
    WavelengthError,
)
from layerclip.io import write_layer_map
from layerclip.pipeline import clean_file
from layerclip.simulate import make_cube


@pytest.fixture()
def sim():  # function scope: tests damage the arrays of its HDU list
    return make_cube("compact", shape=(60, 12, 12), seed=3, n_artifacts=5, fov_size=10,
                     wave_range=(1.50, 1.53))


@pytest.fixture()
def good(sim, tmp_path):
    path = tmp_path / "good_s3d.fits"
    sim.writeto(path)
    return path


def _variant(sim, path, change):
    hdul = sim.hdulist()
    change(hdul)
    hdul.writeto(path, output_verify="ignore")
    return path


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def refused(tmp_path, capsys, argv, cls, pattern, library):
    """Run ``argv`` through the CLI and ``library()``; both must refuse the same way."""
    before = _snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"layerclip {argv[0]}: error: "), err
    assert pattern in err, err
    assert _snapshot(tmp_path) == before  # input untouched, no output, no temporary file
    with pytest.raises(cls) as info:
        library()
    assert pattern in str(info.value) and "\n" not in str(info.value)
    assert type(info.value) is cls
    assert _snapshot(tmp_path) == before
    return str(info.value)


def _clean_case(tmp_path, capsys, src, cls, pattern, *args, **kwargs):
    out = tmp_path / "out.fits"
    return refused(tmp_path, capsys, ["clean", str(src), "-o", str(out), *args], cls, pattern,
                   lambda: clean_file(src, out, **kwargs))


WAVE = ("--obs-wave", "1.52")


# ----------------------------------------------------------------------------- files

def test_missing_file(tmp_path, capsys):
    _clean_case(tmp_path, capsys, tmp_path / "nope.fits", InputFileError,
                "nope.fits: no such file", *WAVE, obs_wave=1.52)


def test_truncated_data(good, tmp_path, capsys):
    src = tmp_path / "trunc.fits"
    data = good.read_bytes()
    src.write_bytes(data[: len(data) - 5000])
    good.unlink()
    _clean_case(tmp_path, capsys, src, InputFileError, "trunc.fits: truncated FITS file",
                *WAVE, obs_wave=1.52)


def test_truncated_header(good, tmp_path, capsys):
    src = tmp_path / "trunc_hdr.fits"
    src.write_bytes(good.read_bytes()[:4000])
    good.unlink()
    _clean_case(tmp_path, capsys, src, InputFileError, "trunc_hdr.fits: truncated FITS file",
                *WAVE, obs_wave=1.52)


def test_not_fits(tmp_path, capsys):
    src = tmp_path / "notes.fits"
    src.write_bytes(b"these are my observing notes\n" * 200)
    _clean_case(tmp_path, capsys, src, InputFileError, "notes.fits: not a readable FITS file",
                *WAVE, obs_wave=1.52)


def test_header_data_size_mismatch(sim, tmp_path, capsys):
    """The last image's header promises more planes than the file holds."""
    src = tmp_path / "mismatch.fits"
    hdul = sim.hdulist()
    hdul = fits.HDUList([hdul[0], hdul["SCI"], hdul["ERR"], hdul["DQ"]])
    hdul.writeto(src)
    with fits.open(src) as h:
        at = h["DQ"].fileinfo()["hdrLoc"]
    raw = bytearray(src.read_bytes())
    i = raw.index(b"NAXIS3  =", at)
    raw[i:i + 30] = b"NAXIS3  = %20d" % 90
    src.write_bytes(bytes(raw))
    _clean_case(tmp_path, capsys, src, InputFileError, "mismatch.fits: truncated FITS file",
                *WAVE, obs_wave=1.52)


def test_extension_shapes_differ(sim, tmp_path, capsys):
    def change(h):
        h["ERR"].data = h["ERR"].data[:, :5]

    src = _variant(sim, tmp_path / "errshape.fits", change)
    _clean_case(tmp_path, capsys, src, CubeFormatError,
                "errshape.fits[ERR]: shape (60, 5, 12) differs from SCI (60, 12, 12)",
                *WAVE, obs_wave=1.52)


@pytest.mark.parametrize("ndim", [2, 4])
def test_wrong_dimensionality(sim, tmp_path, capsys, ndim):
    def change(h):
        for ext in ("SCI", "ERR", "DQ"):
            h[ext].data = h[ext].data[0] if ndim == 2 else h[ext].data[None]

    src = _variant(sim, tmp_path / f"dim{ndim}.fits", change)
    _clean_case(tmp_path, capsys, src, CubeFormatError,
                f"dim{ndim}.fits[SCI]: expected a 3-D cube (wavelength, y, x), found {ndim}-D",
                *WAVE, obs_wave=1.52)


def test_non_float_data(sim, tmp_path, capsys):
    def change(h):
        h["SCI"].data = np.nan_to_num(h["SCI"].data * 100).astype(np.int32)

    src = _variant(sim, tmp_path / "int.fits", change)
    _clean_case(tmp_path, capsys, src, CubeFormatError,
                "int.fits[SCI]: expected floating-point data, found int32", *WAVE, obs_wave=1.52)


def test_all_nan_cube(sim, tmp_path, capsys):
    def change(h):
        h["SCI"].data[:] = np.nan

    src = _variant(sim, tmp_path / "nan.fits", change)
    _clean_case(tmp_path, capsys, src, CubeFormatError,
                "nan.fits[SCI]: every value is NaN or infinite", *WAVE, obs_wave=1.52)


# ----------------------------------------------------------------------------- wavelengths

def test_wcs_without_spectral_axis(sim, tmp_path, capsys):
    def change(h):
        for key in ("CTYPE3", "CUNIT3", "CRVAL3", "CDELT3", "CRPIX3"):
            h["SCI"].header.remove(key, ignore_missing=True)

    src = _variant(sim, tmp_path / "nospec.fits", change)
    _clean_case(tmp_path, capsys, src, WavelengthError,
                "nospec.fits[SCI]: the WCS has no spectral axis", *WAVE, obs_wave=1.52)


def test_celestial_third_axis(sim, tmp_path, capsys):
    def change(h):
        h["SCI"].header["CTYPE3"] = "RA---TAN"

    src = _variant(sim, tmp_path / "ra3.fits", change)
    _clean_case(tmp_path, capsys, src, WavelengthError,
                "ra3.fits[SCI]: the WCS has no spectral axis (CTYPE3 'RA---TAN')",
                *WAVE, obs_wave=1.52)


@pytest.mark.parametrize("value", [665784332966, -3, 2.5])
def test_wcsaxes_not_an_axis_count(sim, tmp_path, capsys, value):
    # a corrupted WCSAXES asking for billions of axes crashed the process inside
    # wcslib (found by tests/test_fuzz.py)
    def change(h):
        h["SCI"].header["WCSAXES"] = value

    src = _variant(sim, tmp_path / "axes.fits", change)
    _clean_case(tmp_path, capsys, src, WavelengthError,
                f"axes.fits[SCI]: WCSAXES = {value!r} is not a number of WCS axes",
                *WAVE, obs_wave=1.52)


@pytest.mark.parametrize("unit", ["furlong", "s"])
def test_wavelength_unit_not_understood(sim, tmp_path, capsys, unit):
    def change(h):
        h["SCI"].header["CUNIT3"] = unit

    src = _variant(sim, tmp_path / "unit.fits", change)
    _clean_case(tmp_path, capsys, src, WavelengthError,
                f"unit.fits[SCI]: wavelength unit CUNIT3 '{unit}' not understood",
                *WAVE, obs_wave=1.52)


def test_line_outside_coverage(good, tmp_path, capsys):
    _clean_case(tmp_path, capsys, good, WavelengthError,
                "--line Ha --z 0.1: the line falls at 0.72211 um, outside the cube's "
                "wavelength range 1.50000-1.53000 um", "--line", "Ha", "--z", "0.1",
                line="Ha", z=0.1)


def test_empty_target(good, tmp_path, capsys):
    _clean_case(tmp_path, capsys, good, EmptyTargetError, "no spaxel has S/N >= 1e+09",
                *WAVE, "--snr-threshold", "1e9", obs_wave=1.52, threshold=1e9)


# ----------------------------------------------------------------------------- layer maps

def test_layer_map_wrong_shape(good, tmp_path, capsys):
    layers = tmp_path / "lm.fits"
    write_layer_map(layers, np.zeros((5, 5), dtype=int))
    _clean_case(tmp_path, capsys, good, LayerMapError,
                "lm.fits: shape (5, 5) does not match the cube's spatial shape (12, 12)",
                "--layers", str(layers), layers=layers)


@pytest.mark.parametrize("values,pattern", [
    (np.full((12, 12), 7.5), "values must be whole numbers (-1, 0, 1..N)"),
    (np.full((12, 12), -3, dtype=np.int16), "values must be -1 (excluded), 0 (sky) or 1..N"),
])
def test_layer_map_wrong_values(good, tmp_path, capsys, values, pattern):
    layers = tmp_path / "lm.fits"
    fits.PrimaryHDU(values).writeto(layers)
    _clean_case(tmp_path, capsys, good, LayerMapError, pattern, "--layers", str(layers),
                layers=layers)


# ----------------------------------------------------------------------------- outputs

@pytest.fixture()
def layers(tmp_path):
    path = tmp_path / "layers.fits"
    write_layer_map(path, np.zeros((12, 12), dtype=int))
    return path


def test_output_is_the_input(good, layers, tmp_path, capsys):
    refused(tmp_path, capsys, ["clean", str(good), "-o", str(good), "--layers", str(layers)],
            OutputError, "is the input file; choose another output path",
            lambda: clean_file(good, good, layers=layers))


def test_output_exists(good, layers, tmp_path, capsys):
    out = tmp_path / "out.fits"
    out.write_bytes(b"precious")
    refused(tmp_path, capsys, ["clean", str(good), "-o", str(out), "--layers", str(layers)],
            OutputError, "out.fits: already exists (use --overwrite to replace it)",
            lambda: clean_file(good, out, layers=layers))
    assert out.read_bytes() == b"precious"


def test_output_folder_missing(good, layers, tmp_path, capsys):
    out = tmp_path / "nowhere" / "out.fits"
    refused(tmp_path, capsys, ["clean", str(good), "-o", str(out), "--layers", str(layers)],
            OutputError, "nowhere does not exist",
            lambda: clean_file(good, out, layers=layers))


def test_output_folder_not_writable(good, layers, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    out = folder / "out.fits"
    try:
        if os.geteuid() == 0:  # root may write anywhere: act as an ordinary user would see it
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(
                folder) else real(p, mode, **kw))
        refused(tmp_path, capsys, ["clean", str(good), "-o", str(out), "--layers",
                                   str(layers)],
                OutputError, f"folder {folder} is not writable",
                lambda: clean_file(good, out, layers=layers))
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_output_file_cannot_be_created(good, layers, tmp_path, capsys, monkeypatch):
    """The folder looks writable but creating the temporary file fails (EACCES, EROFS)."""
    import tempfile

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", deny)
    out = tmp_path / "out.fits"
    refused(tmp_path, capsys, ["clean", str(good), "-o", str(out), "--layers", str(layers)],
            OutputError, "cannot create a file in folder",
            lambda: clean_file(good, out, layers=layers))


def test_not_enough_disk_space(good, layers, tmp_path, capsys, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "out.fits"
    refused(tmp_path, capsys, ["clean", str(good), "-o", str(out), "--layers", str(layers)],
            OutputError, "MiB free, the output needs about",
            lambda: clean_file(good, out, layers=layers))


@pytest.mark.parametrize("stage", ["update", "finish"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_error_or_ctrl_c_while_writing_leaves_nothing(good, layers, tmp_path, capsys,
                                                      monkeypatch, stage, exc):
    from layerclip.io import output

    def boom(*args, **kwargs):
        raise exc("while writing")

    target = {"update": (output.CleanedWriter, "_patch"), "finish": (output, "update_checksums")}
    monkeypatch.setattr(*target[stage], boom)
    before = _snapshot(tmp_path)
    out = tmp_path / "out.fits"
    argv = ["clean", str(good), "-o", str(out), "--layers", str(layers)]
    if exc is KeyboardInterrupt:
        assert main(argv) == 130
    else:
        with pytest.raises(RuntimeError):
            main(argv)
    assert _snapshot(tmp_path) == before


def test_existing_output_survives_a_failed_overwrite(good, layers, tmp_path, monkeypatch):
    from layerclip.io import output

    out = tmp_path / "out.fits"
    out.write_bytes(b"earlier result")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(output, "update_checksums", boom)
    assert main(["clean", str(good), "-o", str(out), "--layers", str(layers),
                 "--overwrite"]) == 130
    assert out.read_bytes() == b"earlier result"


# ----------------------------------------------------------------------------- ERR policy

def test_bad_err_is_excluded_and_reported(sim, tmp_path, layers):
    """ERR zero, negative or NaN where SCI is finite: excluded from the statistics, never
    flagged, counted in one BadUncertaintyWarning; the other voxels are cleaned as usual."""
    planes, ys, xs = 20, 5, 5
    hdul = sim.hdulist()
    sci, err = hdul["SCI"].data, hdul["ERR"].data
    assert np.isfinite(sci[planes, ys, xs])
    sci[planes, ys, xs] = 1e6  # a huge outlier with an unusable error
    err[planes, ys, xs] = 0.0
    err[30, 5, 6] = -1.0
    err[31, 5, 6] = np.nan
    sci[40, 6, 6] = 1e6  # a huge outlier with a good error
    src = tmp_path / "baderr.fits"
    hdul.writeto(src)
    out = tmp_path / "out.fits"
    with pytest.warns(BadUncertaintyWarning, match="baderr.fits: 3 voxels with finite flux "
                      "have zero, negative or NaN uncertainty"):
        result, _ = clean_file(src, out, layers=layers, method="paper")
    assert not result.flags[planes, ys, xs] and not result.flags[30, 5, 6]
    assert result.flags[40, 6, 6]
    with fits.open(out) as cleaned:
        assert cleaned["SCI"].data[planes, ys, xs] == 1e6
    # same as cleaning with those voxels excluded by hand
    from layerclip.clip import clip_cube
    from layerclip.io import read_cube

    cube = read_cube(src)
    excluded = cube.excluded.copy()
    excluded[planes, ys, xs] = excluded[30, 5, 6] = excluded[31, 5, 6] = True
    expected = clip_cube(cube.sci, cube.err, np.zeros((12, 12), int), method="paper",
                         excluded=excluded)
    np.testing.assert_array_equal(result.flags, expected.flags)


def test_normal_data_gives_no_err_warning(good, layers, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean_file(good, tmp_path / "out.fits", layers=layers)


# ----------------------------------------------------------------------------- recipes, regions

def test_recipe_unknown_key(good, tmp_path, capsys):
    from layerclip.recipe import load_recipe

    recipe = tmp_path / "target.toml"
    recipe.write_text('z = 1.3293\n[clean]\nsigma = 5.0\nsigmaa = 4\n'
                      f'[[cube]]\npath = "{good.name}"\n')
    message = refused(tmp_path, capsys, ["mask", "--recipe", str(recipe)], OptionError,
                      "sigmaa", lambda: load_recipe(recipe))
    assert "target.toml" in message


def test_recipe_wrong_type(good, tmp_path, capsys):
    from layerclip.recipe import load_recipe

    recipe = tmp_path / "target.toml"
    recipe.write_text(f'z = "high"\n[[cube]]\npath = "{good.name}"\n')
    message = refused(tmp_path, capsys, ["mask", "--recipe", str(recipe)], OptionError,
                      "target.toml", lambda: load_recipe(recipe))
    assert "z" in message


def test_region_file_does_not_parse(good, tmp_path, capsys):
    from layerclip.masks.regionfiles import read_regions

    region = tmp_path / "galaxy.reg"
    region.write_text("# Region file format: DS9\nimage\ncircle(5, 5, oops\n")
    out = tmp_path / "masks"
    refused(tmp_path, capsys, ["mask", str(good), "--obs-wave", "1.52", "--keep-region",
                               str(region), "--out", str(out)], InputFileError,
            "galaxy.reg", lambda: read_regions(region))


def test_every_refusal_is_a_layerclip_error():
    for cls in (InputFileError, CubeFormatError, WavelengthError, LayerMapError,
                EmptyTargetError, OptionError, OutputError):
        assert issubclass(cls, LayerclipError)
    assert str(CubeFormatError("a\n  b")) == "a b"
