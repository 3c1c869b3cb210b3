"""``layerclip clean INPUT -o OUTPUT``: clean one cube."""

from ..clip import METHODS, REPLACE
from ..pipeline import clean_file

NAME = "clean"


def _n_layers(text):
    import argparse

    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number or 'auto'") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least 1")
    return value


def add_layer_options(parser):
    """Options that build the automatic layer map (shared by commands that need one)."""
    group = parser.add_argument_group("target mask and layers")
    group.add_argument("--layers", metavar="FILE.fits",
                       help="use this layer map instead of building one")
    group.add_argument("--line", help="line for the S/N map: a name (e.g. 'Ha', "
                       "'[O III]5008') or a rest wavelength in Angstrom; needs --z")
    group.add_argument("--z", type=float, help="redshift of the target")
    group.add_argument("--obs-wave", type=float, metavar="MICRONS",
                       help="observed wavelength of the line, microns (instead of --line/--z)")
    group.add_argument("--width", type=float, default=750.0, metavar="KMS",
                       help="total width of the line window in km/s (default 750)")
    group.add_argument("--snr-threshold", type=float, default=3.0,
                       help="S/N above which a spaxel belongs to the target (default 3)")
    group.add_argument("--n-layers", type=_n_layers, default="auto",
                       help="target S/N layers wanted, or 'auto' (3-4 by the target's S/N "
                       "range and size; the default)")
    group.add_argument("--continuum", action="store_true",
                       help="build the S/N map from the continuum (whole cube, known line "
                       "windows masked; with --z) instead of a line")


def add_format_options(parser):
    """Options naming the parts of a cube file (layout detection overrides) and block size."""
    from ..io.formats import FORMATS

    group = parser.add_argument_group(
        "input layout (detected; override when needed)",
        "JWST s3d, MUSE DATA/STAT, ESO <prefix>.DATA/.NOISE (KMOS), KCWI icubes/vcubes/"
        "mcubes files, or a generic SCI+ERR / SCI+VAR file. EXT is an EXTNAME or an HDU "
        "number.")
    group.add_argument("--format", dest="cube_format", choices=FORMATS, default="auto",
                       help="file layout (default auto)")
    group.add_argument("--sci", metavar="EXT", help="flux extension")
    group.add_argument("--err", metavar="EXT", help="1-sigma uncertainty extension")
    group.add_argument("--var", metavar="EXT", help="variance extension (instead of --err)")
    group.add_argument("--dq", metavar="EXT", help="data-quality extension")
    group.add_argument("--err-file", metavar="FILE", help="1-sigma uncertainty in this file")
    group.add_argument("--var-file", metavar="FILE", help="variance in this file")
    group.add_argument("--dq-file", metavar="FILE", help="data quality / mask in this file")
    group.add_argument("--block-planes", type=int, metavar="N",
                       help="clean out of core in blocks of N planes (automatic for cubes "
                            "larger than memory allows; the result is the same)")


def read_options(args):
    """The layout overrides of :func:`add_format_options` as ``read_cube`` keywords."""
    keys = {"format": "cube_format", "sci": "sci", "err": "err", "var": "var", "dq": "dq",
            "err_file": "err_file", "var_file": "var_file", "dq_file": "dq_file"}
    out = {k: getattr(args, a, None) for k, a in keys.items()}
    return {k: v for k, v in out.items() if v is not None and v != "auto"}


def add_parser(sub):
    p = sub.add_parser(NAME, help="clean one cube", description=__doc__)
    p.add_argument("input", nargs="?", help="input cube (JWST s3d, MUSE, KMOS, KCWI, generic; "
                   "see the input layout options); not needed with --recipe")
    p.add_argument("-o", "--output", help="output FITS file (required without --recipe)")
    p.add_argument("--recipe", metavar="FILE.toml",
                   help="clean every cube of a recipe (layer maps and settings from it)")
    p.add_argument("--cube", dest="cube_names", action="append", metavar="NAME",
                   help="with --recipe: clean only this cube (repeatable)")
    p.add_argument("--method", choices=METHODS, default=METHODS[0],
                   help=f"clipping method (default {METHODS[0]})")
    p.add_argument("--sigma", type=float, default=5.0, help="clipping threshold (default 5)")
    p.add_argument("--maxiters", type=int, default=5,
                   help="paper mode: clipping passes (default 5)")
    p.add_argument("--replace", choices=REPLACE, default=None,
                   help="value for flagged voxels: model (robust prediction; robust's "
                   "default), median (of the layer, the paper's; paper's default), interp "
                   "(along wavelength), nan (SCI/ERR NaN, DQ DO_NOT_USE|OUTLIER)")
    p.add_argument("--grow", type=int, default=None, metavar="N",
                   help="robust mode: grow flags N steps to adjacent planes/spaxels that "
                   "are also > 3 sigma (default 2; 0 turns growing off)")
    p.add_argument("--err-factor", type=float, default=None, metavar="F",
                   help="robust mode: multiply ERR by F (default: measured on the cube, "
                   "how many times the noise exceeds ERR, used where above 1.05; 1 keeps "
                   "ERR as it is)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--report", metavar="DIR",
                   help="also write the diagnostics report (figures + report.html) here")
    add_layer_options(p)
    add_format_options(p)
    p.set_defaults(run=run)
    return p


def run_recipe(args):
    """``clean --recipe``: every (or each --cube) cube of a recipe."""
    from ..errors import OptionError
    from ..recipe import clean_recipe, load_recipe

    if args.input or args.output or args.layers or args.line or args.obs_wave \
            or args.continuum:
        raise OptionError("with --recipe, the cubes, outputs and layer settings come from the "
                          "recipe; drop INPUT, -o, --layers, --line, --obs-wave, --continuum")
    if getattr(args, "report", None):
        raise OptionError("--report is not available with --recipe; run `layerclip report` "
                          "on each cleaned cube")
    recipe = load_recipe(args.recipe)
    for entry, result, info in clean_recipe(recipe, names=args.cube_names,
                                            overwrite=args.overwrite):
        print(f"{recipe.name} / {entry.name}: {entry.input.name}")
        print(summary(result, info))
        print(f"wrote {entry.output}")
    return 0


def run(args):
    if getattr(args, "recipe", None):
        return run_recipe(args)
    if not args.input or not args.output:
        from ..errors import OptionError

        raise OptionError("give INPUT and -o OUTPUT (or --recipe FILE)")
    if getattr(args, "report", None):
        from ..report import check_report_dir

        check_report_dir(args.report, overwrite=args.overwrite)
    result, info = clean_file(
        args.input, args.output, method=args.method, sigma=args.sigma,
        maxiters=args.maxiters, layers=args.layers, line=args.line, z=args.z,
        obs_wave=args.obs_wave, width_kms=args.width, threshold=args.snr_threshold,
        n_layers=args.n_layers, overwrite=args.overwrite, continuum=args.continuum,
        read_options=read_options(args), block_planes=getattr(args, "block_planes", None),
        replace=args.replace, grow=args.grow, err_factor=args.err_factor,
    )
    print(summary(result, info))
    print(f"wrote {args.output}")
    if getattr(args, "report", None):
        from ..report import report_file
        from .report import describe

        print(describe(report_file(args.output, out=args.report, original=args.input,
                                   overwrite=args.overwrite, read_options=read_options(args))))
    return 0


def summary(result, info):
    """A short table of replaced voxels per group."""
    n_planes = result.flags.shape[0]
    rows = [f"method {result.method}, layers {info.source}"]
    rows.append(f"{'group':<10}{'spaxels':>9}{'replaced':>10}{'per plane':>11}")
    for g, n in result.counts_per_group.items():
        spaxels = int((result.layer_map == g).sum())
        name = "sky" if g == 0 else f"layer {g}"
        rows.append(f"{name:<10}{spaxels:>9}{n:>10}{n / n_planes:>11.2f}")
    rows.append(f"{'total':<10}{int((result.layer_map >= 0).sum()):>9}"
                f"{result.n_flagged:>10}{result.n_flagged / n_planes:>11.2f}")
    return "\n".join(rows)
