"""Recipe files: everything that makes a target's layer maps and cleaned cubes, in one TOML.

A recipe records the whole of the paper's section 2.1 for one target (S/N
map, threshold, regions, spaxel lists, layer rule, hand edits) and the
clipping settings, so the layer map is rebuilt bit for bit and the cleaning
re-run exactly: ``layerclip mask --recipe target.toml`` and ``layerclip clean
--recipe target.toml``. Relative paths are resolved against the recipe's folder.

Schema (every table and key optional unless marked)::

    name = "SGAS1723"              # target name (default: the file's stem)
    z = 1.3293                     # redshift for every cube
    output_dir = "cleaned"         # cleaned cubes (default: the recipe's folder)
    mask_dir = "masks"             # layer maps, S/N maps, figures (default: output_dir)

    [snr]                          # the S/N map: one of line/lines, obs_wave, continuum
    line = "[O III]5008"           # or lines = ["Ha", "[N II]6585"]; rest Angstrom also
    width_kms = 750
    combine = "sum"                # several lines: "sum" or "max"
    # obs_wave = 1.1666            # microns (number or list)
    # continuum = true             # whole cube, known line windows masked (needs z)
    # continuum_width_kms = 1500

    [target]
    threshold = 3.0
    min_island = 4
    keep_at = [[21, 24]]           # zero-based (x, y) on the target
    segmentation = false           # photutils deblending against neighbours
    reject_at = [[30, 29]]         # with segmentation: remove the segments here
    segmentation_npixels = 5
    segmentation_contrast = 0.001
    keep_regions = ["galaxy.reg"]  # DS9/CRTF files, pixel or sky coordinates
    remove_regions = ["star.reg"]
    add_regions = []
    ignore_regions = []            # these spaxels become -1 (left out of clipping)
    add_spaxels = [[30, 9]]
    remove_spaxels = []
    ignore_spaxels = []

    [layers]
    rule = "auto"                  # "auto", "edges" or "vorbin"
    n_layers = "auto"              # or 1..N
    edges = [10.0, 40.0]           # rule "edges": S/N boundaries between layers
    vorbin_target_sn = 50.0
    rank = "robust"                # rank artifact-hit spaxels by neighbours; "snr": as is
    statistic = "std"              # scale statistic of the clip the layers serve
    balance = 0.9
    wide_range = 30.0
    # file = "my_layers.fits"      # use a finished layer map instead

    [[edits]]                      # applied in order, after the layers
    op = "move"                    # spaxels = [[x, y], ...] or region = "file.reg"
    spaxels = [[30, 12]]
    to_layer = 2                   # -1 exclude, 0 sky, 1..N, or "top"
    [[edits]]
    op = "lift_edges"              # width = 2, wmap_fraction = 0.5, use_wmap = true,
                                   # include_sky = false, max_distance = 3
    [[edits]]
    op = "demote_artifacts"        # factor = 2, robust_factor = 1.5, min_excess = 3

    [clean]                        # options of layerclip.pipeline.clean_file
    method = "robust"              # default: the package's default method
    sigma = 5.0                    # also sizes the layers
    maxiters = 5
    # replace = "median"           # replacement choice, as --replace
    # grow = 1                     # as --grow
    # err_factor = 1.0             # as --err-factor (1: keep ERR as it is)

    [[cube]]                       # required: one per grating/cube
    name = "g140h"                 # default: the file's stem
    path = "jw01355_g140h_s3d.fits"   # required
    output = "g140h_cleaned_s3d.fits" # default: output_dir/<stem>_cleaned.fits
    z = 1.3293                     # override
    [cube.snr]                     # any of snr/target/layers/clean, key by key over
    line = "Ha"                    # the top-level tables; [[cube.edits]] are added
                                   # after the top-level edits

API used by ``layerclip batch`` and the command line:

- :func:`load_recipe` ``(path) -> Recipe``: read and validate (unknown keys,
  wrong types, missing files raise :class:`~layerclip.errors.OptionError` or
  :class:`~layerclip.errors.InputFileError` naming the file, table and key);
- ``Recipe.cubes``: list of :class:`CubeEntry` (``name``, ``input``, ``output``,
  ``spec`` (a :class:`~layerclip.masks.MaskSpec`), ``layers_file``, ``clean``);
  ``Recipe.select(names)`` picks some;
- ``CubeEntry.clean_options()``: keyword arguments for
  :func:`layerclip.pipeline.clean_file` (``method``, ``sigma``, ``maxiters``);
- :func:`build_layer_map` ``(entry, cube=None) -> MaskResult``;
- :func:`mask_recipe` (write layer map, S/N map, figure per cube) and
  :func:`clean_recipe` (make or reuse the layer map, then clean) per entry.
"""

import copy
import difflib
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputFileError, OptionError, OutputError
from .masks.build import EDIT_OPS, MaskSpec

__all__ = ["Recipe", "CubeEntry", "load_recipe", "build_layer_map", "mask_recipe",
           "clean_recipe", "entry_layer_map_file", "SCHEMA"]

log = logging.getLogger(__name__)

# Value kinds: number, int, str, bool, path, paths, positions, lines, numbers, n_layers,
# layer (to_layer), choice:<a>|<b>.
SCHEMA = {
    "": {"name": "str", "z": "number", "output_dir": "path", "mask_dir": "path",
         "snr": "table", "target": "table", "layers": "table", "edits": "edits",
         "clean": "table", "cube": "cubes"},
    "snr": {"line": "lines", "lines": "lines", "obs_wave": "numbers", "continuum": "bool",
            "width_kms": "number", "combine": "choice:sum|max",
            "continuum_width_kms": "number"},
    "target": {"threshold": "number", "min_island": "int", "keep_at": "positions",
               "reject_at": "positions",
               "segmentation": "bool", "segmentation_npixels": "int",
               "segmentation_contrast": "number", "keep_regions": "paths",
               "remove_regions": "paths", "add_regions": "paths", "ignore_regions": "paths",
               "add_spaxels": "positions", "remove_spaxels": "positions",
               "ignore_spaxels": "positions"},
    "layers": {"rule": "choice:auto|edges|vorbin", "n_layers": "n_layers",
               "edges": "numbers", "vorbin_target_sn": "number",
               "rank": "choice:snr|robust", "statistic": "choice:std|std-mean|std-ddof1|mad",
               "balance": "number", "wide_range": "number", "file": "path"},
    "clean": {"method": "str", "sigma": "number", "maxiters": "int", "replace": "str",
              "grow": "int", "err_factor": "number"},
    "cube": {"name": "str", "path": "path", "output": "path", "z": "number", "snr": "table",
             "target": "table", "layers": "table", "clean": "table", "edits": "edits"},
    "edits:move": {"op": "str", "spaxels": "positions", "region": "path", "to_layer": "layer"},
    "edits:lift_edges": {"op": "str", "width": "number", "wmap_fraction": "number",
                         "use_wmap": "bool", "include_sky": "bool", "max_distance": "number"},
    "edits:demote_artifacts": {"op": "str", "factor": "number", "robust_factor": "number",
                               "min_excess": "number"},
}
_TABLES = ("snr", "target", "layers", "clean")
_PATH_KEYS = {"keep_regions", "remove_regions", "add_regions", "ignore_regions", "region",
              "file", "path"}


@dataclass
class CubeEntry:
    """One cube of a recipe.

    Attributes
    ----------
    name : str
        Label (grating), unique within the recipe.
    input, output : Path
        The cube and its cleaned copy (absolute).
    spec : MaskSpec
        Settings of its target mask and layers.
    layers_file : Path or None
        A finished layer map to use instead of building one.
    clean : dict
        ``method``, ``sigma``, ``maxiters`` (and ``replace``, ``grow``, ``err_factor``
        when set).
    mask_dir : Path
        Folder of its layer map, S/N map and figure.
    """

    name: str
    input: Path
    output: Path
    spec: MaskSpec
    layers_file: Path | None = None
    clean: dict = field(default_factory=dict)
    mask_dir: Path | None = None

    def clean_options(self):
        """Keyword arguments for :func:`layerclip.pipeline.clean_file`."""
        return dict(self.clean)

    def products(self):
        """Paths of the layer map, S/N map and figure this entry writes."""
        from .masks.products import product_paths

        return product_paths(self.input.name, self.mask_dir)


@dataclass
class Recipe:
    """A loaded, validated recipe (see the module docstring for the schema)."""

    path: Path
    name: str
    cubes: list
    output_dir: Path
    mask_dir: Path

    def select(self, names=None):
        """The entries called ``names`` (all when None); unknown names raise OptionError."""
        if not names:
            return list(self.cubes)
        if isinstance(names, str):
            names = [names]
        known = {c.name: c for c in self.cubes}
        out = []
        for n in names:
            if n not in known:
                raise OptionError(f"--cube {n!r}: recipe {self.path.name} has cubes "
                                  f"{', '.join(known)}")
            out.append(known[n])
        return out


class _Checker:
    def __init__(self, path):
        self.path = Path(path)
        self.folder = self.path.parent

    def fail(self, where, msg, cls=OptionError):
        raise cls(f"recipe {self.path}: {where}: {msg}")

    def keys(self, table, schema_key, where):
        if not isinstance(table, dict):
            self.fail(where, f"expected a table, found {type(table).__name__}")
        allowed = SCHEMA[schema_key]
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(where, f"unknown key {key!r}{hint}; expected one of "
                                 f"{', '.join(allowed)}")
            self.value(table[key], allowed[key], f"{where} {key}")

    def value(self, value, kind, where):
        def need(ok, what):
            if not ok:
                self.fail(where, f"expected {what}, found {type(value).__name__} {value!r}")

        is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "number":
            need(is_num and np.isfinite(value), "a number")
        elif kind == "int":
            need(isinstance(value, int) and not isinstance(value, bool), "a whole number")
        elif kind == "str":
            need(isinstance(value, str), "a string")
        elif kind == "bool":
            need(isinstance(value, bool), "true or false")
        elif kind == "path":
            need(isinstance(value, str) and value, "a file or folder path (string)")
        elif kind == "paths":
            need(isinstance(value, list) and all(isinstance(v, str) for v in value),
                 "a list of file paths")
        elif kind == "numbers":
            ok = is_num or (isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
            need(ok, "a number or a list of numbers")
        elif kind == "lines":
            items = value if isinstance(value, list) else [value]
            need(all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                     for v in items) and items, "a line name, a rest wavelength or a list")
        elif kind == "positions":
            need(isinstance(value, list) and all(
                isinstance(p, list) and len(p) == 2
                and all(isinstance(c, int) and not isinstance(c, bool) for c in p)
                for p in value), "a list of [x, y] whole-number pairs (zero-based)")
        elif kind == "n_layers":
            need(value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                                     and value >= 1), "'auto' or a whole number >= 1")
        elif kind == "layer":
            need(value == "top" or (isinstance(value, int) and not isinstance(value, bool)
                                    and value >= -1), "-1, 0, a layer 1..N or 'top'")
        elif kind.startswith("choice:"):
            options = kind[7:].split("|")
            need(value in options, "one of " + ", ".join(repr(o) for o in options))
        elif kind == "table":
            need(isinstance(value, dict), "a table")
        elif kind in ("edits", "cubes"):
            need(isinstance(value, list) and all(isinstance(v, dict) for v in value),
                 "an array of tables ([[...]])")

    def edits(self, edits, where):
        for i, edit in enumerate(edits, 1):
            w = f"{where} {i}"
            op = edit.get("op")
            if op not in EDIT_OPS:
                self.fail(w, f"op {op!r}: expected one of {', '.join(EDIT_OPS)}")
            self.keys(edit, f"edits:{op}", f"{w} ({op})")
            if op == "move":
                if ("spaxels" in edit) == ("region" in edit):
                    self.fail(f"{w} (move)", "give either spaxels or region")
                if "to_layer" not in edit:
                    self.fail(f"{w} (move)", "to_layer is missing")

    def resolve(self, value, where, *, must_exist=True):
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = self.folder / p
        if must_exist and not p.exists():
            self.fail(where, f"{value}: no such file (resolved to {p})", InputFileError)
        return p


def _merge(base, over):
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = copy.deepcopy(value)
    return out


def _spec(tables, edits, z, ck, where):
    snr, target, layers, clean = (tables[t] for t in _TABLES)
    spec = MaskSpec()
    lines = snr.get("lines", snr.get("line"))
    if "line" in snr and "lines" in snr:
        ck.fail(f"{where} [snr]", "give line or lines, not both")
    spec.lines = None if lines is None else (lines if isinstance(lines, list) else [lines])
    spec.z = z
    spec.obs_wave = snr.get("obs_wave")
    spec.continuum = bool(snr.get("continuum", False))
    chosen = sum([spec.lines is not None, spec.obs_wave is not None, spec.continuum])
    if chosen != 1:
        ck.fail(f"{where} [snr]", "give exactly one of line/lines, obs_wave or "
                                  "continuum = true")
    if spec.lines is not None and z is None:
        ck.fail(where, f"line {spec.lines[0]!r} needs a redshift: add z = ... to the recipe "
                       "or the cube")
    for key in ("width_kms", "combine", "continuum_width_kms"):
        if key in snr:
            setattr(spec, key, snr[key])
    for key, value in target.items():
        if key.endswith("_regions"):
            value = [str(ck.resolve(v, f"{where} [target] {key}")) for v in value]
        setattr(spec, key, value)
    for key in ("rule", "n_layers", "edges", "vorbin_target_sn", "rank", "statistic",
                "balance", "wide_range"):
        if key in layers:
            setattr(spec, key, layers[key])
    spec.sigma = float(clean.get("sigma", 5.0))
    resolved = []
    for i, edit in enumerate(edits, 1):
        e = dict(edit)
        if "region" in e:
            e["region"] = str(ck.resolve(e["region"], f"{where} edit {i} region"))
        resolved.append(e)
    spec.edits = resolved
    try:
        spec.check()
    except OptionError as exc:
        ck.fail(where, str(exc))
    return spec


def _clean_options(table, ck, where):
    from . import clip

    methods = tuple(getattr(clip, "METHODS", ("paper",)))
    method = table.get("method", methods[0])
    if method not in methods:
        ck.fail(f"{where} [clean] method", f"{method!r}: expected one of {', '.join(methods)}")
    options = {"method": method, "sigma": float(table.get("sigma", 5.0)),
               "maxiters": int(table.get("maxiters", 5))}
    if "replace" in table:
        choices = tuple(getattr(clip, "REPLACE", ()))
        if table["replace"] not in choices:
            ck.fail(f"{where} [clean] replace", f"{table['replace']!r}: expected one of "
                                                f"{', '.join(choices)}")
        options["replace"] = table["replace"]
    if "grow" in table:
        options["grow"] = int(table["grow"])
    if "err_factor" in table:
        if not table["err_factor"] > 0:
            ck.fail(f"{where} [clean] err_factor", f"{table['err_factor']!r}: expected a "
                                                   "positive number")
        options["err_factor"] = float(table["err_factor"])
    return options


def load_recipe(path):
    """Read and validate a recipe file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Recipe

    Raises
    ------
    InputFileError
        The recipe, a cube or a region file is missing, or the TOML is malformed.
    OptionError
        Unknown keys, wrong types, inconsistent settings.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"recipe {path}: no such file")
    if path.is_dir():
        raise InputFileError(f"recipe {path}: is a folder, expected a TOML file")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputFileError(f"recipe {path}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"recipe {path}: cannot be read ({exc})") from None
    ck = _Checker(path)
    ck.keys(data, "", "top level")
    for t in _TABLES:
        ck.keys(data.get(t, {}), t, f"[{t}]")
    ck.edits(data.get("edits", []), "[[edits]]")
    cubes = data.get("cube")
    if not cubes:
        ck.fail("top level", "no [[cube]] table: add one with path = \"...s3d.fits\" per cube")
    name = data.get("name", path.stem)
    output_dir = ck.resolve(data.get("output_dir", "."), "output_dir", must_exist=False)
    mask_dir = ck.resolve(data["mask_dir"], "mask_dir", must_exist=False) \
        if "mask_dir" in data else output_dir
    entries = []
    seen = set()
    for i, cube in enumerate(cubes, 1):
        where = f"[[cube]] {i}"
        ck.keys(cube, "cube", where)
        if "path" not in cube:
            ck.fail(where, "path is missing (the cube file)")
        for t in _TABLES:
            ck.keys(cube.get(t, {}), t, f"{where} [cube.{t}]")
        ck.edits(cube.get("edits", []), f"{where} [[cube.edits]]")
        source = ck.resolve(cube["path"], f"{where} path")
        cname = cube.get("name", source.name.split(".")[0])
        where = f"[[cube]] {cname!r}"
        if cname in seen:
            ck.fail(where, "two cubes have this name; give each a different name")
        seen.add(cname)
        tables = {t: _merge(data.get(t, {}), cube.get(t, {})) for t in _TABLES}
        edits = list(data.get("edits", [])) + list(cube.get("edits", []))
        z = cube.get("z", data.get("z"))
        spec = _spec(tables, edits, z, ck, where)
        stem = source.name.split(".")[0]
        output = ck.resolve(cube["output"], f"{where} output", must_exist=False) \
            if "output" in cube else output_dir / f"{stem}_cleaned.fits"
        if output.resolve() == source.resolve():
            ck.fail(where, f"output {output} is the input cube", OutputError)
        lf = tables["layers"].get("file")
        layers_file = None if lf is None else ck.resolve(lf, f"{where} [layers] file")
        clean = _clean_options(tables["clean"], ck, where)
        entries.append(CubeEntry(name=cname, input=source, output=output, spec=spec,
                                 layers_file=layers_file, clean=clean, mask_dir=mask_dir))
    return Recipe(path=path, name=name, cubes=entries, output_dir=output_dir,
                  mask_dir=mask_dir)


def build_layer_map(entry, *, cube=None):
    """Build the layer map of one recipe entry.

    Parameters
    ----------
    entry : CubeEntry
    cube : Cube, optional
        The entry's cube, already read (read from ``entry.input`` otherwise).

    Returns
    -------
    MaskResult or None
        None when the entry names a finished layer map (``[layers] file``).
    """
    from .io import read_cube
    from .masks import mask_cube

    if entry.layers_file is not None:
        return None
    if cube is None:
        cube = read_cube(entry.input)
    return mask_cube(cube, entry.spec)


def mask_recipe(recipe, *, names=None, overwrite=False, figure=True):
    """Write the layer map, S/N map and figure of each (selected) cube of a recipe.

    Returns
    -------
    list of (CubeEntry, MaskResult, dict of paths)
    """
    from .io import read_cube
    from .masks import write_mask_products

    out = []
    for entry in recipe.select(names):
        if entry.layers_file is not None:
            log.info("%s: uses the finished layer map %s", entry.name, entry.layers_file)
            out.append((entry, None, {"layers": entry.layers_file}))
            continue
        cube = read_cube(entry.input)
        result = build_layer_map(entry, cube=cube)
        paths = write_mask_products(result, cube, entry.mask_dir, overwrite=overwrite,
                                    figure=figure, title=f"{recipe.name}: {entry.name}")
        out.append((entry, result, paths))
    return out


def _same_layer_map(path, layer_map):
    from .io import read_layer_map

    try:
        old = read_layer_map(path, layer_map.shape)
    except Exception:  # any unreadable old product is simply not the same map
        return False
    return old.dtype == layer_map.dtype and np.array_equal(old, layer_map)


def entry_layer_map_file(entry, *, overwrite=False, figure=True, title=None):
    """The layer-map file a cube entry is cleaned with, built and written if needed.

    A ``[layers] file`` given in the recipe is used as is. Otherwise the map is
    rebuilt from the recipe; an existing ``<cube>_layers.fits`` in the mask folder
    is reused when identical and replaced only with ``overwrite`` when it differs.
    """
    from .io import read_cube
    from .masks import write_mask_products

    if entry.layers_file is not None:
        return entry.layers_file
    cube = read_cube(entry.input)
    result = build_layer_map(entry, cube=cube)
    layers = entry.products()["layers"]
    if layers.exists() and _same_layer_map(layers, result.layer_map):
        log.info("%s: reusing identical layer map %s", entry.name, layers)
    else:
        if layers.exists() and not overwrite:
            raise OutputError(f"{layers}: exists and differs from the layer map the recipe "
                              "makes now (use --overwrite to replace it)")
        write_mask_products(result, cube, entry.mask_dir, overwrite=True, figure=figure,
                            title=title or entry.name)
    return layers


def clean_recipe(recipe, *, names=None, overwrite=False, figure=True):
    """Clean each (selected) cube of a recipe.

    The layer map is rebuilt from the recipe; an existing ``<cube>_layers.fits``
    in the mask folder is reused when it is identical, and replaced only with
    ``overwrite`` when it differs. Cleaning then reads that file, so the cleaned
    cube's LAYERS extension is the recipe's map.

    Returns
    -------
    list of (CubeEntry, ClipResult, LayerMapInfo)
    """
    from .pipeline import clean_file

    out = []
    for entry in recipe.select(names):
        layers = entry_layer_map_file(entry, overwrite=overwrite, figure=figure,
                                      title=f"{recipe.name}: {entry.name}")
        entry.output.parent.mkdir(parents=True, exist_ok=True)
        res, info = clean_file(entry.input, entry.output, layers=layers, overwrite=overwrite,
                               **entry.clean_options())
        out.append((entry, res, info))
    return out
