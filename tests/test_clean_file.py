"""`layerclip clean` on files: JWST-layout round trip, provenance, and refused inputs."""

import re
import shutil

import numpy as np
import pytest
from astropy.io import fits

from layerclip.cli import main
from layerclip.io import read_cube, write_layer_map


def _hdu_bytes(path, index):
    """Raw bytes (header and data) of HDU ``index`` as stored in ``path``."""
    with fits.open(path) as hdul:
        info = hdul[index].fileinfo()
    start, end = info["hdrLoc"], info["datLoc"] + info["datSpan"]
    with open(path, "rb") as fh:
        fh.seek(start)
        return fh.read(end - start)


@pytest.fixture()
def miri_with_outliers(miri_s3d, tmp_path):
    path = tmp_path / "miri_s3d.fits"
    shutil.copy(miri_s3d, path)
    with fits.open(path, mode="update") as hdul:
        hdul["SCI"].data[3, 4, 5] = 1e4
        hdul["SCI"].data[7, 1, 1] = -1e4
    layers = tmp_path / "layers.fits"
    layer_map = np.zeros((10, 10), dtype=int)
    layer_map[0, 0] = -1
    write_layer_map(layers, layer_map)
    return path, layers


def test_round_trip_keeps_every_other_hdu(miri_with_outliers, tmp_path, capsys):
    src, layers = miri_with_outliers
    out = tmp_path / "clean_s3d.fits"
    before = src.read_bytes()
    assert main(["clean", str(src), "-o", str(out), "--layers", str(layers),
                 "--method", "paper"]) == 0
    assert src.read_bytes() == before  # input untouched
    with fits.open(src) as a, fits.open(out) as b:
        names_in = [h.name for h in a]
        names_out = [h.name for h in b]
        # the input's HDUs first, in order, then what layerclip appends
        assert names_out[:len(names_in)] == names_in
        assert names_out[len(names_in):len(names_in) + 2] == ["CLIPPED", "LAYERS"]
        for i, name in enumerate(names_in):
            if name not in ("SCI", "ERR", "DQ"):
                assert _hdu_bytes(src, i) == _hdu_bytes(out, i), name
        flags = b["CLIPPED"].data.astype(bool)
        assert b["CLIPPED"].data.dtype == np.uint8
        assert flags[3, 4, 5] and flags[7, 1, 1] and flags.sum() == 2
        for ext in ("SCI", "ERR"):
            np.testing.assert_array_equal(a[ext].data[~flags], b[ext].data[~flags])
        sky = np.delete(a["SCI"].data[3].ravel(), 0)  # spaxel (0, 0) is excluded
        assert b["SCI"].data[3, 4, 5] == np.median(sky)
        dq_in, dq_out = a["DQ"].data, b["DQ"].data
        np.testing.assert_array_equal(dq_out[~flags], dq_in[~flags])
        assert np.all(dq_out[flags] & 16)
        np.testing.assert_array_equal(b["LAYERS"].data, fits.getdata(layers))
        history = "\n".join(str(h) for h in b["SCI"].header["HISTORY"])
        assert "layerclip 0.1.0" in history and "method=paper" in history
        assert "sigma=5.0" in history and "maxiters=5" in history
        # the non-data header cards are unchanged
        for key in ("BUNIT", "CTYPE3", "PS3_0", "CRVAL1"):
            assert a["SCI"].header[key] == b["SCI"].header[key]
    # the output still reads as a cube, tabular wavelengths included
    cube = read_cube(out)
    np.testing.assert_allclose(cube.wavelength[:2], [4.89, 4.89064], rtol=1e-6)
    assert "replaced" in capsys.readouterr().out


def test_wavelengths_linear_and_tabular(miri_s3d, small_cube, tmp_path):
    cube = read_cube(miri_s3d)
    assert cube.wavelength.shape == (10,)
    assert np.all(np.diff(cube.wavelength) > 0)
    path = tmp_path / "sim_s3d.fits"
    small_cube.writeto(path)
    sim = read_cube(path)
    np.testing.assert_allclose(sim.wavelength, small_cube.wavelength, rtol=1e-9)
    assert sim.sci.dtype.byteorder in "=|"
    assert sim.excluded[:, ~small_cube.footprint].all()


def test_clean_with_automatic_layers(small_cube, tmp_path, capsys):
    src = tmp_path / "sim_s3d.fits"
    small_cube.writeto(src)
    out = tmp_path / "sim_clean.fits"
    code = main(["clean", str(src), "-o", str(out), "--line", "[O III]5008",
                 "--z", str(small_cube.z), "--method", "paper"])
    assert code == 0
    with fits.open(out) as hdul:
        layers = hdul["LAYERS"].data
        assert layers.min() == -1 and layers.max() >= 2
        assert (layers[~small_cube.footprint] == -1).all()
        assert hdul["LAYERS"].header["NLAYERS"] == layers.max()
        history = "\n".join(str(h) for h in hdul["SCI"].header["HISTORY"])
        assert "line=[O III]5008" in history and f"z={small_cube.z:g}" in history
        assert hdul["CLIPPED"].data.sum() > 0
        # a second run of the same command refuses to overwrite ...
    assert main(["clean", str(src), "-o", str(out), "--line", "Hb", "--z", "1.3293"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # ... unless asked
    assert main(["clean", str(src), "-o", str(out), "--obs-wave", "1.16653",
                 "--overwrite", "--method", "paper"]) == 0


# -- refused inputs: one-line message naming what is wrong, exit code 2, no output ----------

def _write(path, hdus):
    fits.HDUList([fits.PrimaryHDU(), *hdus]).writeto(path)
    return path


def _cube_hdus(shape=(20, 8, 9), sci_shape=None, err_shape=None):
    hdr = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CTYPE3": "WAVE",
                       "CUNIT3": "um", "CRVAL3": 1.0, "CDELT3": 0.001, "CRPIX3": 1.0})
    sci = np.ones(sci_shape or shape, dtype=np.float32)
    err = np.ones(err_shape or shape, dtype=np.float32)
    return [fits.ImageHDU(sci, hdr, name="SCI"), fits.ImageHDU(err, hdr, name="ERR")]


def _bad_cases(tmp_path):
    good = _write(tmp_path / "good.fits", _cube_hdus())
    (tmp_path / "text.fits").write_text("this is not FITS\n" * 100)
    layers_wrong = tmp_path / "layers_wrong.fits"
    write_layer_map(layers_wrong, np.zeros((5, 5), dtype=int))
    layers_sky = tmp_path / "layers_sky.fits"
    write_layer_map(layers_sky, np.zeros((8, 9), dtype=int))
    existing = tmp_path / "exists.fits"
    existing.write_bytes(b"keep me")
    return {
        "missing file": ([str(tmp_path / "nope.fits")], "no such file"),
        "not FITS": ([str(tmp_path / "text.fits")], "not a readable FITS file"),
        "no SCI": ([str(_write(tmp_path / "nosci.fits", _cube_hdus()[1:]))], "no SCI extension"),
        "no ERR": ([str(_write(tmp_path / "noerr.fits", _cube_hdus()[:1]))], "no ERR extension"),
        "not 3-D": ([str(_write(tmp_path / "2d.fits", _cube_hdus(shape=(8, 9))))],
                    r"\[SCI\]: expected a 3-D cube"),
        "shapes differ": ([str(_write(tmp_path / "shapes.fits",
                                      _cube_hdus(err_shape=(20, 8, 8))))], "differ"),
        "layer map shape": ([str(good), "--layers", str(layers_wrong)],
                            "does not match the cube's spatial shape"),
        "line outside": ([str(good), "--line", "Ha", "--z", "0"],
                         "outside the cube's wavelength range"),
        "no target": ([str(good), "--obs-wave", "1.005"], "no spaxel has S/N >= 3"),
        "output is input": ([str(good), "--obs-wave", "1.005", "--out-is-input"],
                            "is the input file"),
        "output exists": ([str(good), "--obs-wave", "1.005", "--existing"],
                          "already exists"),
        "err factor": ([str(good), "--layers", str(layers_sky), "--err-factor", "0"],
                       r"--err-factor 0\.0: expected a positive number"),
    }, existing


@pytest.mark.parametrize("case", ["missing file", "not FITS", "no SCI", "no ERR", "not 3-D",
                                  "shapes differ", "layer map shape", "line outside",
                                  "no target", "output is input", "output exists",
                                  "err factor"])
def test_refused_inputs(case, tmp_path, capsys):
    cases, existing = _bad_cases(tmp_path)
    args, message = cases[case]
    out = tmp_path / "out.fits"
    if "--out-is-input" in args:
        args.remove("--out-is-input")
        out = args[0]
    if "--existing" in args:
        args.remove("--existing")
        out = existing
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    code = main(["clean", *args, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0]
    assert re.search(message, lines[0]), lines[0]
    after = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing changed, no temporary left
