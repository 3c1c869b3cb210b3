"""Determinism: the same input and options give byte-identical files, however they are made
(twice, from another folder, in memory or out of core, with one or several workers)."""

import re
import shutil

import numpy as np
import pytest
from astropy.io import fits

from layerclip.cli import main
from layerclip.io import write_layer_map
from layerclip.io.undo import restore_file
from layerclip.pipeline import clean_file
from layerclip.simulate import make_cube


@pytest.fixture(scope="module")
def cube_file(tmp_path_factory):
    sim = make_cube("arc", shape=(90, 24, 24), seed=5, n_artifacts=25, fov_size=18,
                    wave_range=(1.14, 1.19), z=1.3293)
    path = tmp_path_factory.mktemp("det") / "target_s3d.fits"
    sim.writeto(path)
    return path, sim


def _clean_cli(src, out, *args):
    assert main(["clean", str(src), "-o", str(out), *args]) == 0
    return out.read_bytes()


def test_twice_and_from_another_folder(cube_file, tmp_path, capsys):
    src, sim = cube_file
    options = ["--line", sim.line, "--z", str(sim.z), "--n-layers", "2"]
    first = _clean_cli(src, tmp_path / "a.fits", *options)
    second = _clean_cli(src, tmp_path / "b.fits", *options)
    elsewhere = tmp_path / "deep" / "other" / "folder"
    elsewhere.mkdir(parents=True)
    shutil.copy(src, elsewhere / src.name)
    third = _clean_cli(elsewhere / src.name, elsewhere / "c.fits", *options)
    assert first == second == third
    # no paths, no dates, no checksums that astropy might add on its own
    text = first.decode("latin-1")
    assert str(tmp_path) not in text and str(src.parent) not in text
    with fits.open(tmp_path / "a.fits") as out, fits.open(src) as inp:
        for i in range(len(inp)):
            assert list(out[i].header.keys())[: len(inp[i].header)] \
                == list(inp[i].header.keys()) or i == 1, out[i].name
            for key in ("DATE", "CHECKSUM", "DATASUM"):
                assert (key in out[i].header) == (key in inp[i].header), (i, key)
        history = [str(h) for h in out["SCI"].header["HISTORY"]]
    assert history and not any(re.search(r"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d", h)
                               for h in history)


@pytest.mark.parametrize("layers,method", [(False, "paper"), (True, "paper"),
                                           (True, "robust")])
def test_in_memory_equals_out_of_core(cube_file, tmp_path, layers, method):
    src, sim = cube_file
    if layers:
        layer_map = np.zeros((24, 24), dtype=int)
        layer_map[8:16, 8:16] = 1
        layer_map[:, 0] = -1
        path = tmp_path / "layers.fits"
        write_layer_map(path, layer_map)
        options = {"layers": path}
    else:
        options = {"line": sim.line, "z": sim.z, "n_layers": 2}
    outputs = []
    blocks = [None, 1, 7, 64] if method == "paper" else [None, 32]
    for i, block_planes in enumerate(blocks):
        out = tmp_path / f"out{i}.fits"
        clean_file(src, out, block_planes=block_planes, method=method, **options)
        outputs.append(out.read_bytes())
    assert all(o == outputs[0] for o in outputs[1:])
    # the out-of-core output restores exactly as well
    restore_file(tmp_path / "out1.fits", tmp_path / "restored.fits")
    assert (tmp_path / "restored.fits").read_bytes() == src.read_bytes()


def test_one_or_many_workers(tmp_path):
    """layerclip batch (Dask, threads here to keep the test fast): the outputs do not depend
    on the number of workers, and equal a plain `clean_file` run with the same cards."""
    from distributed import Client, LocalCluster

    from layerclip.batch import INPUT_KEY, RECIPE_KEY, Job, run_batch

    jobs = {1: [], 3: []}
    layer_map = np.zeros((16, 16), dtype=int)
    write_layer_map(tmp_path / "layers.fits", layer_map)
    for k in range(3):
        sim = make_cube("compact", shape=(40, 16, 16), seed=20 + k, n_artifacts=8,
                        fov_size=12, wave_range=(1.50, 1.53))
        src = tmp_path / f"cube{k}_s3d.fits"
        sim.writeto(src)
        for workers in jobs:
            folder = tmp_path / f"w{workers}"
            folder.mkdir(exist_ok=True)
            jobs[workers].append(Job(name=f"cube{k}", input=str(src),
                                     output=str(folder / f"cube{k}_clean.fits"),
                                     options={"layers": str(tmp_path / "layers.fits")}))
    for workers, batch in jobs.items():
        # Own cluster on a free dashboard port: other test runs may hold the default one.
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            results = run_batch(batch, client=client)
        assert all(r.status == "done" for r in results), [r.error for r in results]
    for k in range(3):
        one = (tmp_path / "w1" / f"cube{k}_clean.fits").read_bytes()
        many = (tmp_path / "w3" / f"cube{k}_clean.fits").read_bytes()
        assert one == many
    with fits.open(tmp_path / "w1" / "cube0_clean.fits") as hdul:
        assert RECIPE_KEY in hdul[0].header and INPUT_KEY in hdul[0].header
    # restore also takes the cards layerclip added to the primary header away
    restore_file(tmp_path / "w3" / "cube1_clean.fits", tmp_path / "restored.fits")
    assert (tmp_path / "restored.fits").read_bytes() == (tmp_path / "cube1_s3d.fits").read_bytes()


def test_err_policy_same_in_memory_and_out_of_core(cube_file, tmp_path):
    """Voxels with unusable ERR are excluded the same way whichever path cleans the cube."""
    from layerclip.errors import BadUncertaintyWarning

    src, sim = cube_file
    hdul = sim.hdulist()
    err = hdul["ERR"].data
    finite = np.argwhere(np.isfinite(hdul["SCI"].data))[::97][:12]
    for k, (p, y, x) in enumerate(finite):
        err[p, y, x] = (0.0, -1.0, np.nan)[k % 3]
        hdul["SCI"].data[p, y, x] = 1e5
    bad = tmp_path / "bad_s3d.fits"
    hdul.writeto(bad)
    layer_map = np.zeros((24, 24), dtype=int)
    write_layer_map(tmp_path / "layers.fits", layer_map)
    outputs = []
    for i, block_planes in enumerate([None, 5]):
        with pytest.warns(BadUncertaintyWarning, match=f"{len(finite)} voxels"):
            result, _ = clean_file(bad, tmp_path / f"o{i}.fits", block_planes=block_planes,
                                   layers=tmp_path / "layers.fits", method="paper")
        outputs.append((tmp_path / f"o{i}.fits").read_bytes())
    assert outputs[0] == outputs[1]
    with fits.open(tmp_path / "o0.fits") as out:
        flags = out["CLIPPED"].data.astype(bool)
    assert not flags[tuple(finite.T)].any()
