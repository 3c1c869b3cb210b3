"""``layerclip batch``: many cubes on a Dask cluster, failures isolated, resumable."""

import pickle

import pytest
from astropy.io import fits

from layerclip.batch import (
    INPUT_KEY,
    RECIPE_KEY,
    Job,
    jobs_from_recipes,
    output_is_current,
    run_batch,
    summary_table,
)
from layerclip.cli import main
from layerclip.simulate import make_cube

distributed = pytest.importorskip("distributed")


def _write_cubes(folder, n):
    cubes = []
    for i in range(n):
        cube = make_cube("compact", shape=(80, 21, 21), seed=40 + i, n_artifacts=15,
                         fov_size=16, wave_range=(1.150, 1.180))
        path = folder / f"cube{i}_s3d.fits"
        cube.writeto(path)
        cubes.append((path, cube))
    return cubes


def _recipe(folder, name, cubes, *, sigma=5.0, broken=None):
    z = cubes[0][1].z
    lines = [f'name = "{name}"', f"z = {z!r}", 'output_dir = "cleaned"', "",
             "[snr]", f'line = "{cubes[0][1].line}"', "", "[clean]", 'method = "paper"',
             f"sigma = {sigma}", ""]
    for path, _ in cubes:
        lines += ["[[cube]]", f'name = "{path.stem}"', f'path = "{path.name}"', ""]
    if broken is not None:
        lines += ["[[cube]]", 'name = "broken"', f'path = "{broken.name}"', ""]
    recipe = folder / f"{name}.toml"
    recipe.write_text("\n".join(lines))
    return recipe


@pytest.fixture(scope="module")
def client():
    """A small in-process cluster shared by the tests of this module.

    One worker thread: Python's warning filters are process-wide, and two threads
    entering and leaving ``warnings.catch_warnings`` at once can undo each other's
    filters, which this test configuration (warnings are errors) turns into
    failures. Process clusters (the default) take ~25 s to start here; they are
    exercised by benchmarks/bench_scale.py (1 vs 2 workers).
    """
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


@pytest.fixture()
def batch_folder(tmp_path):
    cubes = _write_cubes(tmp_path, 3)
    broken = tmp_path / "broken_s3d.fits"
    broken.write_bytes(cubes[0][0].read_bytes()[:20000])  # truncated copy
    recipe = _recipe(tmp_path, "field", cubes, broken=broken)
    return tmp_path, recipe, cubes


def test_one_broken_cube_does_not_stop_the_others(batch_folder, client):
    folder, recipe, cubes = batch_folder
    jobs = jobs_from_recipes([recipe], figure=False)
    assert [j.name for j in jobs] == ["field/cube0_s3d", "field/cube1_s3d", "field/cube2_s3d",
                                      "field/broken"]
    seen = []
    results = run_batch(jobs, client=client, on_result=lambda r, n, t: seen.append((n, t)))
    assert sorted(seen) == [(1, 4), (2, 4), (3, 4), (4, 4)]
    status = {r.name: r.status for r in results}
    assert status == {"field/cube0_s3d": "done", "field/cube1_s3d": "done",
                      "field/cube2_s3d": "done", "field/broken": "failed"}
    broken = results[-1]
    assert "broken_s3d.fits" in broken.error and "truncated" in broken.error
    for r in results[:3]:
        assert r.n_flagged == sum(r.counts.values()) > 0
        with fits.open(r.output) as hdul:
            assert "CLIPPED" in hdul and "LAYERS" in hdul
            assert len(hdul[0].header[RECIPE_KEY]) == 32
            assert len(hdul[0].header[INPUT_KEY]) == 32
    table = summary_table(results)
    assert "field/broken" in table and "failed" in table and "truncated" in table
    assert "3 cleaned, 0 up to date (skipped), 1 failed" in table
    assert "sky=" in table and "L1=" in table


def test_resume_skips_complete_outputs(batch_folder, client):
    folder, recipe, cubes = batch_folder
    first = run_batch(jobs_from_recipes([recipe], figure=False), client=client)
    done = {r.name: r for r in first if r.status == "done"}
    stamps = {name: folder.joinpath(r.output).stat().st_mtime_ns for name, r in done.items()}
    again = run_batch(jobs_from_recipes([recipe], figure=False), client=client)
    assert {r.name: r.status for r in again} == {**{n: "skipped" for n in done},
                                                  "field/broken": "failed"}
    for name, r in done.items():
        assert folder.joinpath(r.output).stat().st_mtime_ns == stamps[name]
    # A changed input is cleaned again; the others stay skipped.
    path0, cube0 = cubes[0]
    with fits.open(path0, mode="update") as hdul:
        hdul["SCI"].data[40, 10, 10] += 1000.0
    third = {r.name: r.status
             for r in run_batch(jobs_from_recipes([recipe], figure=False), client=client)}
    assert third["field/cube0_s3d"] == "done" and third["field/cube1_s3d"] == "skipped"
    # A changed recipe setting re-cleans every cube of it.
    recipe = _recipe(folder, "field", cubes, sigma=4.5)
    fourth = run_batch(jobs_from_recipes([recipe], figure=False), client=client,
                       overwrite=True)
    assert [r.status for r in fourth[:3]] == ["done"] * 3


def test_incomplete_or_foreign_output_is_not_trusted(tmp_path, client):
    (path, cube), = _write_cubes(tmp_path, 1)
    out = tmp_path / "out.fits"
    out.write_bytes(b"partial")
    job = Job("one", str(path), str(out), {"line": cube.line, "z": cube.z, "method": "paper"})
    assert output_is_current(out, "x", "y") is None
    result, = run_batch([job], client=client)
    assert result.status == "failed" and "not made by layerclip batch" in result.error
    result, = run_batch([job], client=client, overwrite=True)
    assert result.status == "done"
    # Removing CLIPPED makes the output incomplete: it is cleaned again.
    with fits.open(out) as hdul:
        recipe_hash, input_hash = hdul[0].header[RECIPE_KEY], hdul[0].header[INPUT_KEY]
        keep = fits.HDUList([h.copy() for h in hdul if h.name != "CLIPPED"])
        keep.writeto(out, overwrite=True)
    assert output_is_current(out, recipe_hash, input_hash) is False
    result, = run_batch([job], client=client)
    assert result.status == "done"
    assert output_is_current(out, recipe_hash, input_hash) is True


def test_jobs_pickle_for_process_workers(batch_folder):
    _, recipe, _ = batch_folder
    jobs = jobs_from_recipes([recipe], names=["cube1_s3d"], figure=False)
    assert len(jobs) == 1
    assert pickle.loads(pickle.dumps(jobs[0])).entry.name == "cube1_s3d"


def test_duplicate_outputs_are_refused(tmp_path):
    from layerclip.errors import OptionError

    jobs = [Job("a", "x.fits", str(tmp_path / "o.fits")),
            Job("b", "y.fits", str(tmp_path / "o.fits"))]
    with pytest.raises(OptionError, match="same output"):
        run_batch(jobs)


def test_cli_batch_on_a_running_scheduler(batch_folder, client, capsys):
    folder, recipe, _ = batch_folder
    address = client.scheduler.address
    code = main(["batch", str(recipe), "--scheduler", address, "--no-figures",
                 "--no-progress", "--cube", "cube0_s3d"])
    captured = capsys.readouterr()
    assert code == 0, captured
    assert f"1 cubes from 1 recipe(s) on {address}" in captured.out
    assert "field/cube0_s3d  done" in captured.out


def test_cli_batch_reports_and_exit_code(batch_folder, capsys):
    folder, recipe, _ = batch_folder
    code = main(["batch", str(recipe), "--threads", "--workers", "1", "--no-figures"])
    captured = capsys.readouterr()
    assert code == 1  # one cube failed
    assert "4 cubes from 1 recipe(s)" in captured.out
    assert "3 cleaned, 0 up to date (skipped), 1 failed" in captured.out
    assert "4/4 cubes, 1 failed" in captured.err  # the progress display
    code = main(["batch", str(recipe), "--threads", "--workers", "1", "--no-figures",
                 "--cube", "cube2_s3d", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert "field/cube2_s3d  skipped" in captured.out
    assert captured.err == ""

