"""Recipes: validation with clear errors, bit-identical re-runs, `mask`/`clean --recipe`."""

import textwrap

import numpy as np
import pytest
from astropy.io import fits

from layerclip.cli import main
from layerclip.errors import InputFileError, OptionError
from layerclip.recipe import build_layer_map, clean_recipe, load_recipe, mask_recipe
from layerclip.simulate import make_cube

KW = {"shape": (120, 43, 43), "wave_range": (1.15, 1.18), "n_artifacts": 30}


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("target")
    (folder / "data").mkdir()
    make_cube("arc", seed=11, **KW).writeto(folder / "data" / "arc_g140h_s3d.fits")
    make_cube("compact", seed=12, **KW).writeto(folder / "data" / "arc_g235h_s3d.fits")
    (folder / "star.reg").write_text("image\ncircle(30,30,2.5)\n")
    return folder


RECIPE = """\
name = "SIM-ARC"
z = 1.3293
output_dir = "cleaned"
mask_dir = "masks"

[snr]
line = "[O III]5008"
width_kms = 750

[target]
threshold = 3.0
min_island = 4
remove_regions = ["star.reg"]

[layers]
rule = "auto"
rank = "robust"

[[edits]]
op = "lift_edges"

[clean]
method = "paper"
sigma = 5.0
maxiters = 5

[[cube]]
name = "g140h"
path = "data/arc_g140h_s3d.fits"

[[cube]]
name = "g235h"
path = "data/arc_g235h_s3d.fits"
output = "cleaned/g235h_clean.fits"
[cube.layers]
rule = "edges"
edges = [8.0, 40.0]
[[cube.edits]]
op = "move"
spaxels = [[21, 22]]
to_layer = "top"
"""


def _write(folder, text, name="target.toml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_load_resolves_paths_and_merges(target_dir):
    recipe = load_recipe(_write(target_dir, RECIPE))
    assert [c.name for c in recipe.cubes] == ["g140h", "g235h"]
    g140, g235 = recipe.cubes
    assert g140.input == target_dir / "data" / "arc_g140h_s3d.fits"
    assert g140.output == target_dir / "cleaned" / "arc_g140h_s3d_cleaned.fits"
    assert g235.output == target_dir / "cleaned" / "g235h_clean.fits"
    assert g140.spec.remove_regions == [str(target_dir / "star.reg")]
    assert g140.spec.rule == "auto" and g235.spec.rule == "edges"
    assert [e["op"] for e in g235.spec.edits] == ["lift_edges", "move"]
    assert g140.clean_options() == {"method": "paper", "sigma": 5.0, "maxiters": 5}
    # err_factor is taken as an option of the clean
    forced = load_recipe(_write(target_dir, RECIPE.replace(
        "[clean]\n", "[clean]\nerr_factor = 1.0\n", 1)))
    assert forced.cubes[0].clean_options()["err_factor"] == 1.0
    assert recipe.select("g235h") == [g235]
    with pytest.raises(OptionError, match="has cubes g140h, g235h"):
        recipe.select("g395h")


def test_recipe_rerun_is_bit_identical(target_dir, tmp_path):
    recipe = load_recipe(_write(target_dir, RECIPE))
    first = mask_recipe(recipe, figure=False, overwrite=True)
    maps = {e.name: r.layer_map.copy() for e, r, _ in first}
    data = {e.name: p["layers"].read_bytes() for e, _, p in first}
    again = load_recipe(_write(target_dir, RECIPE, "copy.toml"))
    for entry in again.cubes:
        entry.mask_dir = tmp_path
    second = mask_recipe(again, figure=False)
    for entry, result, paths in second:
        assert result.layer_map.dtype == maps[entry.name].dtype
        np.testing.assert_array_equal(result.layer_map, maps[entry.name])
        assert paths["layers"].read_bytes() == data[entry.name]
    g235 = second[1][1]
    assert g235.layer_map[22, 21] == g235.layer_map.max()  # the recorded move
    inside = (np.hypot(*np.mgrid[0:43, 0:43] - np.array([29, 29])[:, None, None]) < 2.5)
    assert not (second[0][1].target & inside).any()  # the region removed the "star"


def test_clean_recipe_cli(target_dir, capsys):
    path = _write(target_dir, RECIPE)
    assert main(["mask", "--recipe", str(path), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "g140h" in out and "wrote" in out and "_mask.png" in out
    assert main(["clean", "--recipe", str(path), "--cube", "g140h"]) == 0
    out = capsys.readouterr().out
    assert "reusing" not in out and "wrote" in out
    cleaned = target_dir / "cleaned" / "arc_g140h_s3d_cleaned.fits"
    layers = target_dir / "masks" / "arc_g140h_s3d_layers.fits"
    with fits.open(cleaned) as hdul:
        np.testing.assert_array_equal(hdul["LAYERS"].data, fits.getdata(layers))
    # a second clean re-uses the identical layer map but refuses to overwrite the cube
    assert main(["clean", "--recipe", str(path), "--cube", "g140h"]) == 2
    assert "already exists" in capsys.readouterr().err
    entry = load_recipe(path).cubes[0]
    np.testing.assert_array_equal(build_layer_map(entry).layer_map, fits.getdata(layers))
    clean_recipe(load_recipe(path), names=["g140h"], overwrite=True)


BAD = {
    "unknown key": ("[target]\ntreshold = 3\n", OptionError,
                    r"\[target\]: unknown key 'treshold' \(did you mean 'threshold'\?\)"),
    "wrong type": ("[target]\nthreshold = \"three\"\n", OptionError,
                   r"\[target\] threshold: expected a number, found str 'three'"),
    "bad positions": ("[target]\nkeep_at = [[1.5, 2]]\n", OptionError,
                      r"keep_at: expected a list of \[x, y\] whole-number pairs"),
    "bad method": ("[clean]\nmethod = \"fast\"\n", OptionError,
                   r"\[clean\] method: 'fast': expected one of .*paper"),
    "bad choice": ("[layers]\nrule = \"magic\"\n", OptionError,
                   r"rule: expected one of 'auto', 'edges', 'vorbin'"),
    "bad edit": ("[[edits]]\nop = \"shift\"\n", OptionError,
                 r"\[\[edits\]\] 1: op 'shift': expected one of move, lift_edges"),
    "edit key": ("[[edits]]\nop = \"lift_edges\"\nwidht = 2\n", OptionError,
                 r"unknown key 'widht' \(did you mean 'width'\?\)"),
    "missing region": ("[target]\nremove_regions = [\"nope.reg\"]\n", InputFileError,
                       r"remove_regions: nope.reg: no such file \(resolved to .*nope.reg\)"),
    "bad err factor": ("[clean]\nerr_factor = -1.0\n", OptionError,
                       r"\[clean\] err_factor: -1.0: expected a positive number"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_recipes_raise_clear_errors(case, target_dir, tmp_path):
    extra, cls, match = BAD[case]
    # tables must come before [[cube]] so their keys do not land in the cube
    text = ('z = 1.3293\n' + extra + '[snr]\nline = "[O III]5008"\n'
            f'[[cube]]\npath = "{target_dir / "data" / "arc_g140h_s3d.fits"}"\n')
    path = _write(tmp_path, text)
    with pytest.raises(cls, match=match):
        load_recipe(path)


def test_bad_recipe_files_and_cli_exit_code(tmp_path, target_dir, capsys):
    with pytest.raises(InputFileError, match="no such file"):
        load_recipe(tmp_path / "missing.toml")
    broken = _write(tmp_path, "name = \n")
    with pytest.raises(InputFileError, match="not valid TOML"):
        load_recipe(broken)
    no_cube = _write(tmp_path, "z = 1\n[snr]\nline = \"Ha\"\n", "nocube.toml")
    with pytest.raises(OptionError, match=r"no \[\[cube\]\] table"):
        load_recipe(no_cube)
    missing_cube = _write(tmp_path, 'z = 1\n[snr]\nline = "Ha"\n[[cube]]\npath = "x.fits"\n',
                          "missingcube.toml")
    with pytest.raises(InputFileError, match=r"\[\[cube\]\] 1 path: x.fits: no such file"):
        load_recipe(missing_cube)
    no_z = _write(tmp_path, '[snr]\nline = "Ha"\n[[cube]]\npath = '
                  f'"{target_dir / "data" / "arc_g140h_s3d.fits"}"\n', "noz.toml")
    with pytest.raises(OptionError, match="needs a redshift"):
        load_recipe(no_z)
    for argv in (["mask", "--recipe", str(broken)], ["clean", "--recipe", str(no_cube)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0]


def test_mask_cli_on_a_cube(target_dir, tmp_path, capsys):
    cube = target_dir / "data" / "arc_g140h_s3d.fits"
    reg = tmp_path / "cut.reg"
    reg.write_text("image\nbox(20,20,4,4,0)\n")
    code = main(["mask", str(cube), "--line", "[O III]5008", "--z", "1.3293", "--out",
                 str(tmp_path / "out"), "--remove-region", str(reg), "--lift-edges",
                 "--move", "21,22:0"])
    assert code == 0
    out = capsys.readouterr().out
    for name in ("arc_g140h_s3d_layers.fits", "arc_g140h_s3d_snr.fits",
                 "arc_g140h_s3d_mask.png"):
        assert (tmp_path / "out" / name).exists()
    assert "edit move" in out and "edit lift_edges" in out and "L1" in out
    lm = fits.getdata(tmp_path / "out" / "arc_g140h_s3d_layers.fits")
    assert lm[22, 21] == 0
    assert main(["mask", str(cube), "--line", "Ha", "--z", "1.3293", "--out",
                 str(tmp_path / "o2")]) == 2
    assert "outside the cube's wavelength range" in capsys.readouterr().err
    assert main(["mask", str(cube), "--z", "1.3293", "--out", str(tmp_path / "o3"),
                 "--continuum", "--line", "Ha"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["mask", str(cube), "--line", "[O III]5008", "--z", "1.3293", "--out",
                 str(tmp_path / "o4"), "--remove-region", str(tmp_path / "none.reg")]) == 2
    assert "none.reg: no such file" in capsys.readouterr().err


def test_clean_continuum_option(tmp_path, capsys):
    src = tmp_path / "cont_s3d.fits"
    make_cube("continuum", seed=2, peak_snr=6.0, **KW).writeto(src)
    assert main(["clean", str(src), "-o", str(tmp_path / "out.fits"), "--continuum",
                 "--z", "1.3293"]) == 0
    with fits.open(tmp_path / "out.fits") as hdul:
        assert hdul["LAYERS"].data.max() >= 1
        assert "continuum S/N" in str(hdul["LAYERS"].header["HISTORY"])
