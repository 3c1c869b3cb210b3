"""Every supported cube layout reads, cleans and writes back in its own layout."""

import shutil

import numpy as np
import pytest
from astropy.io import fits

from layerclip.errors import CubeFormatError, LayerclipWarning, OptionError
from layerclip.io import read_cube, write_layer_map
from layerclip.io.formats import detect_layout, open_cube
from layerclip.io.output import output_paths
from layerclip.pipeline import clean_file

SIGMA = 5.0


def _inject(sci, rng, n, *, avoid=None, scale=None):
    """Add ``n`` strong single-voxel outliers to a copy of ``sci``; return it and positions."""
    out = sci.copy()
    nw, ny, nx = sci.shape
    usable = np.isfinite(sci) if avoid is None else np.isfinite(sci) & ~avoid
    # Keep the outliers in different planes, away from the edges of the wavelength range.
    planes = rng.choice(np.arange(5, nw - 5), size=n, replace=False)
    pos = []
    for k in planes:
        ys, xs = np.nonzero(usable[k])
        i = rng.integers(ys.size)
        y, x = ys[i], xs[i]
        amp = scale if scale is not None else 50 * np.nanstd(sci[k][usable[k]])
        out[k, y, x] += amp
        pos.append((k, y, x))
    return out, pos


def _sky_map(path, shape, tmp_path, no_data=None):
    layers = np.zeros(shape, dtype=int)
    if no_data is not None:
        layers[no_data] = -1
    write_layer_map(tmp_path / "layers.fits", layers)
    return tmp_path / "layers.fits"


def _names(path):
    """EXTNAMEs up to and including LAYERS (later ones, e.g. the undo log, are not ours)."""
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
    return names[:names.index("LAYERS") + 1] if "LAYERS" in names else names


# -- VLT/MUSE ----------------------------------------------------------------------------

def test_muse_reads_as_variance_in_angstrom_air(shared_data):
    cube = read_cube(shared_data / "muse_udf_subcube.fits")
    assert cube.layout.format == "muse" and cube.layout.variance
    assert cube.air
    np.testing.assert_allclose(cube.wavelength[[0, 1]], [0.475, 0.475125])
    with fits.open(shared_data / "muse_udf_subcube.fits") as hdul:
        np.testing.assert_allclose(cube.err ** 2, hdul["STAT"].data, rtol=1e-6)


def test_muse_cleans_in_its_own_layout(shared_data, tmp_path, rng):
    src = tmp_path / "muse.fits"
    shutil.copy(shared_data / "muse_udf_subcube.fits", src)
    with fits.open(src, mode="update") as hdul:
        hdul["DATA"].data, pos = _inject(hdul["DATA"].data, rng, 6)
        before = {h.name: np.array(h.data) for h in hdul if h.data is not None}
    out = tmp_path / "muse_clean.fits"
    layers = _sky_map(src, (30, 30), tmp_path)
    result, _ = clean_file(src, out, layers=layers, sigma=SIGMA, method="paper")
    assert _names(out) == ["PRIMARY", "DATA", "STAT", "FIELDMAP", "CLIPPED", "LAYERS"]
    with fits.open(out) as hdul:
        flags = hdul["CLIPPED"].data.astype(bool)
        for k, y, x in pos:
            assert flags[k, y, x]
        keep = ~flags
        np.testing.assert_array_equal(hdul["DATA"].data[keep], before["DATA"][keep])
        np.testing.assert_array_equal(hdul["STAT"].data[keep], before["STAT"][keep])
        np.testing.assert_array_equal(hdul["FIELDMAP"].data, before["FIELDMAP"])
        # STAT of replaced voxels is the square of the new 1-sigma error
        np.testing.assert_allclose(hdul["STAT"].data[flags], result.err[flags] ** 2,
                                   rtol=1e-6)
        assert hdul["DATA"].header["CTYPE3"] == "AWAV"
    assert read_cube(out).layout.format == "muse"


# -- Keck/KCWI ---------------------------------------------------------------------------

def _kcwi_copy(shared_data, tmp_path, exposure="00112"):
    for kind in "ivm":
        shutil.copy(shared_data / f"kb191227_{exposure}_{kind}cubes.fits", tmp_path)
    return tmp_path / f"kb191227_{exposure}_icubes.fits"


def test_kcwi_three_files_and_zero_padding(shared_data, tmp_path):
    src = _kcwi_copy(shared_data, tmp_path)
    layout = detect_layout(tmp_path / "kb191227_00112_vcubes.fits")  # any of the three
    assert layout.format == "kcwi" and layout.variance and layout.zero_padding
    assert [p.name for p in layout.files] == [
        "kb191227_00112_icubes.fits", "kb191227_00112_vcubes.fits",
        "kb191227_00112_mcubes.fits"]
    cube = read_cube(src)
    flux = fits.getdata(src)
    var = fits.getdata(tmp_path / "kb191227_00112_vcubes.fits")
    mask = fits.getdata(tmp_path / "kb191227_00112_mcubes.fits")
    padding = (flux == 0) & (var == 0)
    assert padding.mean() > 0.4
    assert cube.excluded[padding].all()
    assert cube.excluded[mask == 128].all()
    assert not cube.excluded[(mask == 0) & (var > 0)].any()


def test_kcwi_cleans_in_its_own_layout(shared_data, tmp_path, rng):
    src = _kcwi_copy(shared_data, tmp_path)
    var = fits.getdata(tmp_path / "kb191227_00112_vcubes.fits")
    with fits.open(src, mode="update") as hdul:
        padding = (hdul[0].data == 0) & (var == 0)
        hdul[0].data, pos = _inject(hdul[0].data, rng, 6, avoid=padding)
        flux_before = np.array(hdul[0].data)
    no_data = padding.all(axis=0)
    layers = _sky_map(src, flux_before.shape[1:], tmp_path, no_data=no_data)
    out = tmp_path / "clean_icubes.fits"
    result, _ = clean_file(src, out, layers=layers, sigma=SIGMA, method="paper")
    paths = {p.name: q.name for p, q in output_paths(read_cube(src).layout, out).items()}
    assert paths == {"kb191227_00112_icubes.fits": "clean_icubes.fits",
                     "kb191227_00112_vcubes.fits": "clean_vcubes.fits",
                     "kb191227_00112_mcubes.fits": "clean_mcubes.fits"}
    assert _names(out) == ["PRIMARY", "CLIPPED", "LAYERS"]
    flags = fits.getdata(out, "CLIPPED").astype(bool)
    for k, y, x in pos:
        assert flags[k, y, x]
    assert not flags[padding].any()  # zero padding is no data, never clipped
    new_flux = fits.getdata(out)
    new_var = fits.getdata(tmp_path / "clean_vcubes.fits")
    np.testing.assert_array_equal(new_flux[~flags], flux_before[~flags])
    np.testing.assert_array_equal(new_var[~flags], var[~flags])
    np.testing.assert_allclose(new_var[flags], result.err[flags] ** 2, rtol=1e-6)
    # the mask file is passed through byte for byte
    assert ((tmp_path / "clean_mcubes.fits").read_bytes()
            == (tmp_path / "kb191227_00112_mcubes.fits").read_bytes())
    assert read_cube(out).layout.format == "kcwi"


def test_kcwi_missing_variance_is_refused(shared_data, tmp_path):
    shutil.copy(shared_data / "kb191227_00112_icubes.fits", tmp_path)
    with pytest.raises(CubeFormatError, match="variance file .* not found; give --var-file"):
        detect_layout(tmp_path / "kb191227_00112_icubes.fits", format="kcwi")


# -- ESO <prefix>.DATA / <prefix>.NOISE (KMOS) ----------------------------------------------

def _wave_header(*, ctype="WAVE", unit="um", crval=2.0, cdelt=0.0002, cunit=True):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"], h["CTYPE3"] = "RA---TAN", "DEC--TAN", ctype
    h["CRVAL1"], h["CRVAL2"], h["CRVAL3"] = 150.0, 2.0, crval
    h["CRPIX1"], h["CRPIX2"], h["CRPIX3"] = 7.0, 7.0, 1.0
    h["CDELT1"], h["CDELT2"], h["CDELT3"] = -0.2 / 3600, 0.2 / 3600, cdelt
    if cunit:
        h["CUNIT1"], h["CUNIT2"], h["CUNIT3"] = "deg", "deg", unit
    return h


def _noise_cube(rng, shape=(120, 14, 14), level=1.0):
    sci = rng.normal(0, level, shape).astype(np.float32)
    err = np.full(shape, level, dtype=np.float32)
    return sci, err


def _kmos_file(path, rng, filled=(2,)):
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["INSTRUME"] = "KMOS"
    truth = {}
    for ifu in (1, 2, 3):
        if ifu in filled:
            sci, err = _noise_cube(rng)
            sci, pos = _inject(sci, rng, 5, scale=40.0)
            truth[ifu] = (sci, err, pos)
            hdus.append(fits.ImageHDU(sci, _wave_header(), name=f"IFU.{ifu}.DATA"))
            hdus.append(fits.ImageHDU(err, _wave_header(), name=f"IFU.{ifu}.NOISE"))
        else:  # empty IFUs are header-only extensions
            hdus.append(fits.ImageHDU(None, name=f"IFU.{ifu}.DATA"))
            hdus.append(fits.ImageHDU(None, name=f"IFU.{ifu}.NOISE"))
    fits.HDUList(hdus).writeto(path)
    return truth


def test_kmos_style_cleans_in_its_own_layout(tmp_path, rng):
    src = tmp_path / "kmos_sci.fits"
    truth = _kmos_file(src, rng)
    layout = detect_layout(src)
    assert layout.format == "eso" and not layout.variance
    assert (layout.sci.extname, layout.noise.extname) == ("IFU.2.DATA", "IFU.2.NOISE")
    out = tmp_path / "kmos_clean.fits"
    layers = _sky_map(src, (14, 14), tmp_path)
    clean_file(src, out, layers=layers, sigma=SIGMA, method="paper")
    names = _names(src)
    assert _names(out) == [*names, "CLIPPED", "LAYERS"]
    sci, err, pos = truth[2]
    with fits.open(out) as hdul:
        flags = hdul["CLIPPED"].data.astype(bool)
        assert {tuple(p) for p in np.argwhere(flags)} == {tuple(map(int, p)) for p in pos}
        np.testing.assert_array_equal(hdul["IFU.2.DATA"].data[~flags], sci[~flags])
        np.testing.assert_array_equal(hdul["IFU.2.NOISE"].data[~flags], err[~flags])
        assert hdul["IFU.1.DATA"].data is None


def test_kmos_several_filled_ifus_need_a_choice(tmp_path, rng):
    src = tmp_path / "kmos2.fits"
    _kmos_file(src, rng, filled=(1, 3))
    with pytest.raises(CubeFormatError, match="2 filled cubes .*--sci"):
        detect_layout(src)
    layout = detect_layout(src, sci="IFU.3.DATA")
    assert layout.noise.extname == "IFU.3.NOISE"


# -- generic: SCI + VAR in one file, SCI + ERR in two ------------------------------------

def test_generic_sci_var_one_file_angstrom_air(tmp_path, rng):
    sci, err = _noise_cube(rng, level=2.0)
    sci, pos = _inject(sci, rng, 5, scale=80.0)
    hdr = _wave_header(ctype="AWAV", unit="Angstrom", crval=6500.0, cdelt=1.25)
    src = tmp_path / "generic_var.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, hdr, name="SCI"),
                  fits.ImageHDU(err.astype(np.float64) ** 2, hdr, name="VAR")]).writeto(src)
    cube = read_cube(src)
    assert cube.layout.format == "generic" and cube.layout.variance and cube.air
    np.testing.assert_allclose(cube.wavelength[:2], [0.65, 0.650125])
    out = tmp_path / "generic_var_clean.fits"
    clean_file(src, out, layers=_sky_map(src, (14, 14), tmp_path), sigma=SIGMA, method="paper")
    assert _names(out) == ["PRIMARY", "SCI", "VAR", "CLIPPED", "LAYERS"]
    with fits.open(out) as hdul:
        flags = hdul["CLIPPED"].data.astype(bool)
        assert {tuple(p) for p in np.argwhere(flags)} == {tuple(map(int, p)) for p in pos}
        assert hdul["VAR"].data.dtype == np.dtype(">f8")
        np.testing.assert_allclose(hdul["VAR"].data[flags], 4.0, rtol=1e-6)


def test_generic_two_files(tmp_path, rng):
    sci, err = _noise_cube(rng)
    sci, pos = _inject(sci, rng, 4, scale=40.0)
    src = tmp_path / "target_flux.fits"
    fits.PrimaryHDU(sci, _wave_header()).writeto(src)
    fits.PrimaryHDU(err, _wave_header()).writeto(tmp_path / "target_err.fits")
    with pytest.raises(CubeFormatError, match="one cube and no uncertainty.*--err-file"):
        detect_layout(src)
    options = {"err_file": tmp_path / "target_err.fits"}
    layout = detect_layout(src, **options)
    assert layout.format == "generic" and not layout.variance
    out = tmp_path / "target_flux_clean.fits"
    clean_file(src, out, layers=_sky_map(src, (14, 14), tmp_path), sigma=SIGMA, method="paper",
               read_options=options)
    flags = fits.getdata(out, "CLIPPED").astype(bool)
    assert {tuple(p) for p in np.argwhere(flags)} == {tuple(map(int, p)) for p in pos}
    companion = tmp_path / "target_err_clean.fits"
    new_err = fits.getdata(companion)
    np.testing.assert_array_equal(new_err[~flags], err[~flags])
    assert np.all(new_err[flags] == 1.0)


def test_missing_cunit3_is_guessed_with_a_warning(tmp_path, rng):
    sci, err = _noise_cube(rng, shape=(20, 5, 5))
    hdr = _wave_header(ctype="WAVE", crval=4800.0, cdelt=1.25, cunit=False)
    src = tmp_path / "nounit.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, hdr, name="SCI"),
                  fits.ImageHDU(err, hdr, name="ERR")]).writeto(src)
    with pytest.warns(LayerclipWarning, match="no CUNIT3; CRVAL3=4800 read as Angstrom"):
        cube = read_cube(src)
    np.testing.assert_allclose(cube.wavelength[0], 0.48)


def test_overrides_and_refusals(tmp_path, rng):
    sci, err = _noise_cube(rng, shape=(20, 5, 5))
    hdr = _wave_header()
    src = tmp_path / "odd.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, hdr, name="FOO"),
                  fits.ImageHDU(err, hdr, name="BAR")]).writeto(src)
    with pytest.raises(CubeFormatError, match="cube layout not recognised .*FOO, BAR"):
        detect_layout(src)
    layout = detect_layout(src, sci="FOO", err=2)
    assert (layout.sci.extname, layout.noise.extname, layout.variance) == ("FOO", "BAR", False)
    with pytest.raises(OptionError, match="--err and --var"):
        detect_layout(src, sci="FOO", err="BAR", var="BAR")
    with pytest.raises(OptionError, match="--format 'nirspec'"):
        detect_layout(src, format="nirspec")
    with pytest.raises(CubeFormatError, match=r"no BAZ extension .*check --err"):
        detect_layout(src, sci="FOO", err="BAZ")


# -- JWST s3d ----------------------------------------------------------------------------

def test_miri_s3d_round_trip_keeps_tables(miri_s3d, tmp_path):
    src = tmp_path / "miri_s3d.fits"
    shutil.copy(miri_s3d, src)
    cube = read_cube(src)
    assert cube.layout.format == "jwst" and cube.dq is not None
    out = tmp_path / "miri_clean.fits"
    clean_file(src, out, layers=_sky_map(src, (10, 10), tmp_path), sigma=SIGMA, method="paper")
    with fits.open(src) as a, fits.open(out) as b:
        assert _names(out) == [h.name for h in a] + ["CLIPPED", "LAYERS"]
        for name in ("WCS-TABLE", "ASDF", "WMAP"):
            ia, ib = a.index_of(name), b.index_of(name)
            sa, sb = a[ia].fileinfo(), b[ib].fileinfo()
            raw_a = src.read_bytes()[sa["hdrLoc"]:sa["datLoc"] + sa["datSpan"]]
            raw_b = out.read_bytes()[sb["hdrLoc"]:sb["datLoc"] + sb["datSpan"]]
            assert raw_a == raw_b, name
    np.testing.assert_allclose(read_cube(out).wavelength, cube.wavelength)


def test_checksums_are_recomputed(tmp_path, small_cube):
    src = tmp_path / "sum.fits"
    small_cube.hdulist().writeto(src, checksum=True)
    out = tmp_path / "sum_clean.fits"
    result, _ = clean_file(src, out, line=small_cube.line, z=small_cube.z, method="paper")
    assert result.n_flagged > 0
    # astropy warns (an error under this test configuration) on a wrong checksum
    with fits.open(out, checksum=True) as hdul:
        assert hdul["SCI"].header["CHECKSUM"] != fits.getheader(src, "SCI")["CHECKSUM"]
        assert hdul["SCI"].verify_checksum() == 1 and hdul["DQ"].verify_datasum() == 1


def test_open_cube_reads_blocks(shared_data):
    source = open_cube(shared_data / "muse_udf_subcube.fits")
    whole = source.read()
    block = source.read(100, 137)
    np.testing.assert_array_equal(block.sci, whole.sci[100:137])
    np.testing.assert_array_equal(block.err, whole.err[100:137])
    assert block.sci.dtype == np.float32 and block.sci.dtype.byteorder == "="
