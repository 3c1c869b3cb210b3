"""Out-of-core cleaning equals in-memory cleaning, bit for bit."""

import numpy as np
import pytest
from astropy.io import fits

from layerclip.clip import METHODS, clip_cube
from layerclip.errors import OptionError
from layerclip.io import read_cube
from layerclip.io.formats import open_cube
from layerclip.pipeline import automatic_layer_map, clean_file
from layerclip.stream import auto_block_planes, clip_stream, stream_layer_map, stream_no_data


@pytest.fixture(scope="module")
def cube_file(tmp_path_factory, small_cube):
    path = tmp_path_factory.mktemp("stream") / "sim_s3d.fits"
    small_cube.writeto(path)
    return path


def _hdus(path):
    with fits.open(path) as hdul:
        return [(h.name, h.header.tostring(), None if h.data is None else np.array(h.data))
                for h in hdul]


@pytest.fixture(scope="module")
def short_file(tmp_path_factory):
    """A shorter cube for the slower robust method."""
    from layerclip.simulate import make_cube

    cube = make_cube("arc", shape=(130, 25, 25), seed=11, n_artifacts=25, fov_size=18,
                     wave_range=(1.150, 1.175))
    path = tmp_path_factory.mktemp("stream_short") / "short_s3d.fits"
    cube.writeto(path)
    return path


# Block sizes: paper mode has no halo; robust mode reads halo_planes("robust") (45) extra
# planes on each side, so blocks smaller than the halo are the hard case.
FILE_CASES = [("paper", 7)] + [("robust", 37)] * ("robust" in METHODS)


@pytest.mark.parametrize(("method", "block"), FILE_CASES)
def test_out_of_core_file_equals_in_memory_bit_for_bit(cube_file, small_cube, tmp_path,
                                                       method, block):
    memory = tmp_path / "memory.fits"
    streamed = tmp_path / "streamed.fits"
    r1, i1 = clean_file(cube_file, memory, method=method, line=small_cube.line,
                        z=small_cube.z)
    r2, i2 = clean_file(cube_file, streamed, method=method, line=small_cube.line,
                        z=small_cube.z, block_planes=block)  # 400 planes: last block short
    assert type(r1).__name__ == "ClipResult" and type(r2).__name__ == "StreamResult"
    assert r1.n_flagged > 50
    assert r1.counts_per_group == r2.counts_per_group
    np.testing.assert_array_equal(np.asarray(r2.flags), r1.flags)
    np.testing.assert_array_equal(i1.layer_map, i2.layer_map)
    np.testing.assert_array_equal(i1.snr, i2.snr)
    a, b = _hdus(memory), _hdus(streamed)
    assert [x[0] for x in a] == [x[0] for x in b]
    for (name, ha, da), (_, hb, db) in zip(a, b, strict=True):
        assert ha == hb, name
        if da is not None:
            # byte-level equality, NaNs included
            assert da.tobytes() == db.tobytes(), name


CLIP_CASES = [("paper", 1), ("paper", 13), ("paper", 1000)] + [
    ("robust", 5), ("robust", 50)] * ("robust" in METHODS)


@pytest.mark.parametrize(("method", "block"), CLIP_CASES)
def test_clip_stream_equals_clip_cube(cube_file, short_file, method, block):
    path = cube_file if method == "paper" else short_file
    cube = read_cube(path)
    source = open_cube(path)
    layer_map = np.zeros(cube.shape[1:], dtype=np.int16)
    layer_map[cube.excluded.all(axis=0)] = -1
    layer_map[10:16, 10:16] = 1
    whole = clip_cube(cube.sci, cube.err, layer_map, excluded=cube.excluded, sigma=4.0,
                      method=method)

    class Collect:
        def __init__(self):
            self.parts = []

        def update(self, start, flags, sci, err):
            self.parts.append((start, flags.copy(), sci.copy(), err.copy()))

    collect = Collect()
    result = clip_stream(source, layer_map, writer=collect, block_planes=block, sigma=4.0,
                         method=method)
    starts = [p[0] for p in collect.parts]
    assert starts == list(range(0, cube.shape[0], block))
    flags = np.concatenate([p[1] for p in collect.parts])
    sci = np.concatenate([p[2] for p in collect.parts])
    err = np.concatenate([p[3] for p in collect.parts])
    assert whole.n_flagged > 0
    np.testing.assert_array_equal(flags, whole.flags)
    assert sci.tobytes() == whole.sci.tobytes() and err.tobytes() == whole.err.tobytes()
    assert result.counts_per_group == whole.counts_per_group
    assert result.n_flagged == whole.n_flagged


def test_streamed_layer_map_equals_in_memory(cube_file, small_cube):
    cube = read_cube(cube_file)
    source = open_cube(cube_file)
    mem = automatic_layer_map(cube, line=small_cube.line, z=small_cube.z)
    streamed = stream_layer_map(source, line=small_cube.line, z=small_cube.z, block_planes=9)
    np.testing.assert_array_equal(mem.layer_map, streamed.layer_map)
    np.testing.assert_array_equal(mem.planes, streamed.planes)
    assert mem.history() == streamed.history()
    np.testing.assert_array_equal(stream_no_data(source, block_planes=11),
                                  cube.excluded.all(axis=0))


def test_failed_stream_leaves_no_files(cube_file, small_cube, tmp_path):
    out = tmp_path / "out.fits"
    with pytest.raises(OptionError, match="--sigma"):
        clean_file(cube_file, out, line=small_cube.line, z=small_cube.z, sigma=-1,
                   block_planes=16)
    assert list(tmp_path.iterdir()) == []


def test_auto_block_planes_bounds_memory():
    assert auto_block_planes((3681, 320, 320), memory_mb=256) == 65
    assert auto_block_planes((10, 5, 5)) == 10
    assert auto_block_planes((5, 10_000, 10_000), memory_mb=1) == 1
    # robust mode: more memory per voxel, and blocks no smaller than the halo
    assert auto_block_planes((3681, 43, 43), method="robust", halo=30) == 2208
    assert auto_block_planes((3681, 320, 320), method="robust", halo=30) == 30


def test_stream_measures_err_factor_on_the_whole_cube(tmp_path):
    # ERR at 0.6 times the noise: the factor is measured once, on the same planes
    # whichever way the cube is read, so small blocks agree with the whole cube
    from layerclip.simulate import make_cube

    cube = make_cube("arc", shape=(130, 25, 25), seed=11, n_artifacts=25, fov_size=18,
                     wave_range=(1.150, 1.175), err_scale=0.6)
    path = tmp_path / "under_s3d.fits"
    cube.writeto(path)
    r1, _ = clean_file(path, tmp_path / "memory.fits", line=cube.line, z=cube.z)
    r2, _ = clean_file(path, tmp_path / "streamed.fits", line=cube.line, z=cube.z,
                       block_planes=20)
    assert r1.params["err_factor"] == r2.params["err_factor"]
    assert r1.params["err_factor"] == pytest.approx(1 / 0.6, rel=0.05)
    np.testing.assert_array_equal(np.asarray(r2.flags), r1.flags)
    a, b = _hdus(tmp_path / "memory.fits"), _hdus(tmp_path / "streamed.fits")
    for (name, ha, da), (_, hb, db) in zip(a, b, strict=True):
        assert ha == hb, name
        if da is not None:
            assert da.tobytes() == db.tobytes(), name
    # recorded, and shown by `layerclip info`
    from layerclip.info import file_info

    text = file_info(tmp_path / "streamed.fits").to_text()
    assert f"ERR scaled by      {r1.params['err_factor']}" in text
    # --err-factor 1 keeps ERR as it is, in memory and out of core
    from layerclip.cli import main

    for extra in ([], ["--block-planes", "20"]):
        out = tmp_path / f"kept{len(extra)}.fits"
        assert main(["clean", str(path), "-o", str(out), "--line", cube.line, "--z",
                     str(cube.z), "--err-factor", "1", *extra]) == 0
        assert "ERR scaled by      1.0 " in file_info(out).to_text()
