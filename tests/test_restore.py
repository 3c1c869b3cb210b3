"""Lossless undo: `layerclip restore` gives back the input byte for byte; `layerclip info`."""

import shutil

import numpy as np
import pytest
from astropy.io import fits

from layerclip.cli import main
from layerclip.errors import InputFileError, OutputError, RestoreError
from layerclip.info import file_info
from layerclip.io import write_layer_map
from layerclip.io.undo import HEADERS_EXTNAME, UNDO_EXTNAME, read_undo, restore_file
from layerclip.simulate import make_cube


@pytest.fixture(scope="module")
def sim():
    return make_cube("compact", shape=(80, 14, 14), seed=11, n_artifacts=12, fov_size=12,
                     wave_range=(1.50, 1.53))


def _layers(path, shape, *, excluded=()):
    layer_map = np.zeros(shape, dtype=int)
    for y, x in excluded:
        layer_map[y, x] = -1
    write_layer_map(path, layer_map)
    return path


def _clean(src, out, layers, *extra):
    assert main(["clean", str(src), "-o", str(out), "--layers", str(layers), *extra]) == 0


def test_jwst_round_trip_is_byte_identical(sim, tmp_path, capsys):
    src = tmp_path / "sim_s3d.fits"
    sim.writeto(src)
    layers = _layers(tmp_path / "layers.fits", sim.sci.shape[1:], excluded=[(0, 0)])
    cleaned, restored = tmp_path / "clean.fits", tmp_path / "restored.fits"
    _clean(src, cleaned, layers)
    with fits.open(cleaned) as hdul:
        names = [h.name for h in hdul]
        assert names[-2:] == [UNDO_EXTNAME, HEADERS_EXTNAME]
        table = hdul[UNDO_EXTNAME].data
        flags = hdul["CLIPPED"].data.astype(bool)
        assert len(table) == flags.sum() > 5
        # the table holds the original values in the original stored types
        assert table["SCI"].dtype == np.dtype(">f4") and table["DQ"].dtype == np.dtype(">i4")
        p, y, x = table["PLANE"], table["Y"], table["X"]
        assert flags[p, y, x].all()
        np.testing.assert_array_equal(table["SCI"], sim.sci[p, y, x])
        np.testing.assert_array_equal(table["ERR"], sim.err[p, y, x])
    assert main(["restore", str(cleaned), "-o", str(restored)]) == 0
    assert restored.read_bytes() == src.read_bytes()
    assert f"wrote {restored}" in capsys.readouterr().out


def test_real_miri_file_with_asdf_and_tabular_wavelengths(miri_s3d, tmp_path):
    src = tmp_path / "miri_s3d.fits"
    shutil.copy(miri_s3d, src)
    with fits.open(src, mode="update") as hdul:
        hdul["SCI"].data[3, 4, 5] = 1e4
        hdul["SCI"].data[7, 1, 1] = -1e4
    layers = _layers(tmp_path / "layers.fits", (10, 10))
    cleaned, restored = tmp_path / "clean.fits", tmp_path / "restored.fits"
    _clean(src, cleaned, layers)
    restore_file(cleaned, restored)
    assert restored.read_bytes() == src.read_bytes()


def test_muse_variance_round_trip(shared_data, tmp_path, rng):
    path = shared_data / "muse_udf_subcube.fits"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    src = tmp_path / "muse.fits"
    with fits.open(path) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
        data = hdul["DATA"].data
        planes = rng.integers(0, data.shape[0], 20)
        data[planes, rng.integers(0, 30, 20), rng.integers(0, 30, 20)] = 1e5
        hdul.writeto(src)
    layers = _layers(tmp_path / "layers.fits", (30, 30))
    cleaned, restored = tmp_path / "clean.fits", tmp_path / "restored.fits"
    _clean(src, cleaned, layers, "--method", "paper")
    with fits.open(cleaned) as hdul:
        assert "VAR" in hdul[UNDO_EXTNAME].columns.names
        assert len(hdul[UNDO_EXTNAME].data) >= 20
    restore_file(cleaned, restored)
    assert restored.read_bytes() == src.read_bytes()


def test_kcwi_three_files_round_trip(shared_data, tmp_path):
    names = [f"kb191227_00112_{k}cubes.fits" for k in "ivm"]
    if not all((shared_data / n).exists() for n in names):
        pytest.skip("KCWI test cubes missing")
    for n in names:
        shutil.copy(shared_data / n, tmp_path / n)
    src = tmp_path / names[0]
    with fits.open(src, mode="update") as hdul:
        hdul[0].data[50, 40, 17] = 1e4
        hdul[0].data[120, 60, 10] = 1e4
    layers = _layers(tmp_path / "layers.fits", (96, 34))
    out = tmp_path / "out"
    out.mkdir()
    cleaned = out / "clean_icubes.fits"
    _clean(src, cleaned, layers, "--method", "paper")
    assert (out / "clean_vcubes.fits").exists()
    record = read_undo(cleaned)
    assert record.files == ["clean_vcubes.fits"] and record.n_voxels >= 2
    back = tmp_path / "back"
    back.mkdir()
    written = restore_file(cleaned, back / "r_icubes.fits")
    assert sorted(p.name for p in written.values()) == ["r_icubes.fits", "r_vcubes.fits"]
    assert (back / "r_icubes.fits").read_bytes() == src.read_bytes()
    assert (back / "r_vcubes.fits").read_bytes() == (tmp_path / names[1]).read_bytes()
    # a missing companion is refused with a clear message
    (out / "clean_vcubes.fits").unlink()
    with pytest.raises(InputFileError, match="clean_vcubes.fits: companion file"):
        restore_file(cleaned, back / "again_icubes.fits")
    assert not file_info(cleaned).restorable


def test_checksums_and_scaled_integers(sim, tmp_path):
    """CHECKSUM cards stay valid in the output and come back exactly; BSCALE-scaled data
    are restored from their stored integers."""
    src = tmp_path / "scaled_s3d.fits"
    hdul = sim.hdulist()
    scaled = fits.ImageHDU(data=np.nan_to_num(hdul["SCI"].data.astype(np.float64)),
                           header=hdul["SCI"].header, name="SCI")
    scaled.scale("int16", bscale=0.05, bzero=10.0)
    hdul["SCI"] = scaled
    hdul.writeto(src, checksum=True)
    layers = _layers(tmp_path / "layers.fits", sim.sci.shape[1:])
    cleaned, restored = tmp_path / "clean.fits", tmp_path / "restored.fits"
    _clean(src, cleaned, layers)
    with fits.open(cleaned, checksum=True) as out:
        assert out[UNDO_EXTNAME].data["SCI"].dtype == np.dtype(">i2")
        for i in range(4):
            assert out[i].verify_checksum() == 1, out[i].name
    restore_file(cleaned, restored)
    assert restored.read_bytes() == src.read_bytes()


def test_info_summary(sim, tmp_path, capsys):
    src = tmp_path / "sim_s3d.fits"
    sim.writeto(src)
    layer_map = np.zeros(sim.sci.shape[1:], dtype=int)
    layer_map[4:10, 4:10] = 1
    layer_map[0, :] = -1
    write_layer_map(tmp_path / "layers.fits", layer_map)
    cleaned = tmp_path / "clean.fits"
    _clean(src, cleaned, tmp_path / "layers.fits", "--sigma", "4.5", "--method", "paper")
    info = file_info(cleaned)
    with fits.open(cleaned) as hdul:
        flags = hdul["CLIPPED"].data.astype(bool)
    assert info.params["method"] == "paper" and info.params["sigma"] == 4.5
    assert info.params["version"] == "0.1.0" and info.params["input"] == "sim_s3d.fits"
    assert info.restorable and info.replaced == flags.sum()
    per_spaxel = flags.sum(axis=0)
    assert info.groups == [(0, int((layer_map == 0).sum()), int(per_spaxel[layer_map == 0].sum())),
                           (1, 36, int(per_spaxel[layer_map == 1].sum()))]
    capsys.readouterr()
    assert main(["info", str(cleaned)]) == 0
    text = capsys.readouterr().out
    assert "method             paper sigma=4.5 maxiters=5" in text
    assert "restorable         yes" in text and "layer 1" in text


def test_restore_refusals(sim, tmp_path, capsys):
    src = tmp_path / "sim_s3d.fits"
    sim.writeto(src)
    cleaned = tmp_path / "clean.fits"
    _clean(src, cleaned, _layers(tmp_path / "layers.fits", sim.sci.shape[1:]))
    before = cleaned.read_bytes()
    # not a layerclip output
    with pytest.raises(RestoreError, match="no ORIGINAL extension"):
        restore_file(src, tmp_path / "r.fits")
    assert main(["restore", str(src), "-o", str(tmp_path / "r.fits")]) == 2
    assert "cannot be restored" in capsys.readouterr().err
    assert main(["info", str(src)]) == 2
    assert "not a layerclip output" in capsys.readouterr().err
    # over its own input, over an existing file
    with pytest.raises(OutputError, match="is the input file"):
        restore_file(cleaned, cleaned)
    with pytest.raises(OutputError, match="already exists"):
        restore_file(cleaned, src)
    assert cleaned.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.fits", "layers.fits",
                                                         "sim_s3d.fits"]
    # an undo table stripped from the file: info says why it cannot be restored
    stripped = tmp_path / "stripped.fits"
    with fits.open(cleaned) as hdul:
        fits.HDUList([h for h in hdul if h.name not in (UNDO_EXTNAME,)]).writeto(stripped)
    info = file_info(stripped)
    assert not info.restorable and "no ORIGINAL" in info.restore_note


def test_restore_interrupted_leaves_nothing(sim, tmp_path, monkeypatch):
    import layerclip.io.undo as undo

    src = tmp_path / "sim_s3d.fits"
    sim.writeto(src)
    cleaned = tmp_path / "clean.fits"
    _clean(src, cleaned, _layers(tmp_path / "layers.fits", sim.sci.shape[1:]))

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(undo, "_patch", boom)
    assert main(["restore", str(cleaned), "-o", str(tmp_path / "r.fits")]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.fits", "layers.fits",
                                                         "sim_s3d.fits"]
