"""``layerclip mask CUBE --out DIR``: target mask, S/N layers and their figure.

Writes ``<cube>_layers.fits`` (the layer map), ``<cube>_snr.fits`` (the S/N map)
and ``<cube>_mask.png`` into DIR. Spaxel positions are zero-based ``X,Y``.
With ``--recipe FILE`` every setting (and the cubes) come from the recipe.
"""

from pathlib import Path

from ..errors import OptionError

NAME = "mask"


def _xy(text):
    try:
        x, y = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise OptionError(f"spaxel {text!r}: expected X,Y (zero-based whole numbers)") from None
    return [x, y]


def _move(text):
    try:
        where, layer = text.rsplit(":", 1)
        layer = layer if layer == "top" else int(layer)
    except ValueError:
        raise OptionError(f"--move {text!r}: expected X,Y:LAYER or REGIONFILE:LAYER") from None
    if "," in where and where.replace(",", "").replace("-", "").replace(" ", "").isdigit():
        return {"op": "move", "spaxels": [_xy(where)], "to_layer": layer}
    return {"op": "move", "region": where, "to_layer": layer}


def _numbers(text):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptionError(f"--edges {text!r}: expected comma-separated numbers") from None


def add_parser(sub):
    p = sub.add_parser(NAME, help="build the target mask and S/N layers of a cube",
                       description=__doc__)
    p.add_argument("cube", nargs="?", help="input cube (not needed with --recipe)")
    p.add_argument("--out", metavar="DIR", help="output folder (default with --recipe: the "
                   "recipe's mask_dir)")
    p.add_argument("--recipe", metavar="FILE.toml", help="take everything from a recipe")
    p.add_argument("--cube", dest="cube_names", action="append", metavar="NAME",
                   help="with --recipe: only this cube (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace existing products")
    p.add_argument("--no-figure", action="store_true", help="skip the PNG")
    g = p.add_argument_group("S/N map")
    g.add_argument("--line", action="append", help="line name or rest wavelength in Angstrom "
                   "(repeat for several lines); needs --z")
    g.add_argument("--z", type=float, help="redshift")
    g.add_argument("--obs-wave", type=float, action="append", metavar="MICRONS",
                   help="observed wavelength of a line (repeatable)")
    g.add_argument("--continuum", action="store_true",
                   help="collapse the whole cube with known line windows masked (with --z)")
    g.add_argument("--width", type=float, default=750.0, metavar="KMS",
                   help="full width of each line window, km/s (default 750)")
    g.add_argument("--combine", choices=("sum", "max"), default="sum",
                   help="several lines: one summed map or the highest S/N (default sum)")
    g = p.add_argument_group("target")
    g.add_argument("--snr-threshold", type=float, default=3.0, help="default 3")
    g.add_argument("--min-island", type=int, default=4,
                   help="drop islands smaller than this many spaxels (default 4)")
    g.add_argument("--keep-at", type=_xy, action="append", metavar="X,Y",
                   help="keep only the component(s) touching this spaxel (repeatable)")
    g.add_argument("--segment", action="store_true",
                   help="separate neighbouring sources by segmentation (photutils)")
    g.add_argument("--reject-at", type=_xy, action="append", metavar="X,Y",
                   help="with --segment: remove the segment at this spaxel (a neighbour)")
    for what in ("keep", "remove", "add", "ignore"):
        g.add_argument(f"--{what}-region", action="append", default=[], metavar="FILE",
                       help=f"{what} the spaxels inside a DS9/CRTF region file")
    for what in ("add", "remove", "ignore"):
        g.add_argument(f"--{what}-spaxel", type=_xy, action="append", default=[],
                       metavar="X,Y", help=f"{what} a spaxel (repeatable)")
    g = p.add_argument_group("layers")
    g.add_argument("--layer-rule", choices=("auto", "edges", "vorbin"), default="auto",
                   help="automatic, hand-given edges, or Voronoi-smoothed S/N (default auto)")
    g.add_argument("--n-layers", default="auto", help="layers wanted, or 'auto' (3-4)")
    g.add_argument("--edges", type=_numbers, metavar="S1,S2,...",
                   help="S/N boundaries between layers (implies --layer-rule edges)")
    g.add_argument("--vorbin-sn", type=float, default=50.0, help="Voronoi bin S/N (default 50)")
    g.add_argument("--rank", choices=("snr", "robust"), default="robust",
                   help="rank artifact-inflated spaxels by their neighbours (default robust)")
    g.add_argument("--sigma", type=float, default=5.0,
                   help="clipping threshold the layers must serve (default 5)")
    g.add_argument("--statistic", choices=("std", "std-mean", "std-ddof1", "mad"),
                   default="std", help="scale statistic of that clip (default std)")
    g = p.add_argument_group("edits (applied in this order: moves, lift, demote)")
    g.add_argument("--move", type=_move, action="append", default=[],
                   metavar="X,Y:LAYER", help="move a spaxel (or REGIONFILE:LAYER) to a layer "
                   "(-1 exclude, 0 sky, N, or top)")
    g.add_argument("--lift-edges", action="store_true",
                   help="lift field-edge target spaxels to their interior neighbours' layer")
    g.add_argument("--demote-artifacts", action="store_true",
                   help="demote spaxels whose S/N artifacts inflated")
    p.set_defaults(run=run)
    return p


def spec_from_args(args):
    """A :class:`~layerclip.masks.MaskSpec` from the parsed options."""
    from ..masks import MaskSpec

    n_layers = args.n_layers
    if n_layers != "auto":
        try:
            n_layers = int(n_layers)
        except ValueError:
            raise OptionError(f"--n-layers {n_layers!r}: expected a whole number or 'auto'") \
                from None
    if args.continuum and (args.line or args.obs_wave):
        raise OptionError("give --continuum or --line/--obs-wave, not both")
    edits = list(args.move)
    if args.lift_edges:
        edits.append({"op": "lift_edges"})
    if args.demote_artifacts:
        edits.append({"op": "demote_artifacts"})
    return MaskSpec(
        lines=args.line, z=args.z, obs_wave=args.obs_wave, continuum=args.continuum,
        width_kms=args.width, combine=args.combine, threshold=args.snr_threshold,
        min_island=args.min_island, keep_at=args.keep_at, segmentation=args.segment,
        reject_at=args.reject_at,
        keep_regions=args.keep_region, remove_regions=args.remove_region,
        add_regions=args.add_region, ignore_regions=args.ignore_region,
        add_spaxels=args.add_spaxel, remove_spaxels=args.remove_spaxel,
        ignore_spaxels=args.ignore_spaxel,
        rule="edges" if args.edges else args.layer_rule, n_layers=n_layers,
        edges=args.edges, vorbin_target_sn=args.vorbin_sn, rank=args.rank, sigma=args.sigma,
        statistic=args.statistic, edits=edits,
    ).check()


def summary(name, result, paths, warned=()):
    """Layer table, edits, warnings and written files."""
    rows = [f"{name}: {result.snrmap.describe()}",
            f"target: {int(result.initial.sum())} spaxels with S/N >= "
            f"{result.spec.threshold:g}, {int(result.target.sum())} kept; "
            f"rule {result.choice.rule}, {result.choice.n_layers} layer(s) "
            f"(each needs >= {result.choice.min_size} spaxels)",
            f"{'layer':<8}{'spaxels':>9}{'S/N min':>10}{'S/N max':>10}"]
    for row in result.counts():
        if row["layer"] == 0:
            rows.append(f"{'sky':<8}{row['count']:>9}")
        else:
            rows.append(f"{'L' + str(row['layer']):<8}{row['count']:>9}"
                        f"{row['snr_min']:>10.3g}{row['snr_max']:>10.3g}")
    ranked = result.ranked_by_neighbours
    if ranked is not None and ranked.any():
        rows.append(f"{int(ranked.sum())} spaxel(s) with artifact-inflated or -deflated S/N "
                    "ranked by their neighbours' S/N (--rank robust)")
    rows += [rec.describe() for rec in result.records]
    rows += [f"warning: {w}" for w in warned]
    rows += [f"wrote {p}" for p in paths.values() if p]
    return "\n".join(rows)


def _messages(caught):
    import warnings

    from ..errors import LayerclipWarning

    out = []
    for w in caught:
        if issubclass(w.category, LayerclipWarning):
            if str(w.message) not in out:
                out.append(str(w.message))
        else:  # not ours: let it through as it would have been
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def run(args):
    import warnings

    from ..errors import LayerclipWarning

    if args.recipe:
        if args.cube:
            raise OptionError("with --recipe the cubes come from the recipe; use --cube NAME "
                              "to pick one")
        from ..recipe import load_recipe, mask_recipe

        recipe = load_recipe(args.recipe)
        if args.out:
            for entry in recipe.cubes:
                entry.mask_dir = Path(args.out)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LayerclipWarning)  # shown in the summary
            done = mask_recipe(recipe, names=args.cube_names, overwrite=args.overwrite,
                               figure=not args.no_figure)
        warned = _messages(caught)
        for entry, result, paths in done:
            if result is None:
                print(f"{entry.name}: uses the finished layer map {paths['layers']}")
            else:
                print(summary(entry.name, result, paths, warned))
        return 0
    if not args.cube:
        raise OptionError("give a CUBE or --recipe FILE")
    if not args.out:
        raise OptionError("--out DIR is needed")
    from ..io import read_cube
    from ..masks import mask_cube, write_mask_products

    spec = spec_from_args(args)
    cube = read_cube(args.cube)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LayerclipWarning)  # shown in the summary
        result = mask_cube(cube, spec)
    paths = write_mask_products(result, cube, args.out, overwrite=args.overwrite,
                                figure=not args.no_figure)
    print(summary(cube.name, result, paths, _messages(caught)))
    return 0
