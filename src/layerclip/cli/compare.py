"""``layerclip compare A.fits B.fits ... [--labels ...]``: leftover artifacts of cleanings.

Prints, per cube, the leftover spikes in the continuum-subtracted, line-masked
integrated target spectrum, the fraction of voxels replaced and the integrated line
flux, and writes the Fig. 4 figure (spectra overlaid, residual histogram).
"""

from pathlib import Path

from ..errors import OptionError

NAME = "compare"


def add_parser(sub):
    from .clean import add_layer_options

    p = sub.add_parser(NAME, help="compare cleanings of the same cube (paper Fig. 4)",
                       description=__doc__)
    p.add_argument("cubes", nargs="+", metavar="CUBE.fits", help="cubes on the same grid")
    p.add_argument("--labels", nargs="+", help="one label per cube (default: file names)")
    p.add_argument("--reference", type=int, metavar="N",
                   help="the N-th cube (1-based) is the uncleaned one: drawn grey behind")
    p.add_argument("--out", default="layerclip_compare.png", metavar="FIG.png",
                   help="Fig. 4 figure (default layerclip_compare.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    p.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"),
                   help="spectral range (microns) for the spike count and the figure")
    p.add_argument("--nsigma", type=float, default=5.0,
                   help="spike threshold in noise sigmas (default 5)")
    p.add_argument("--native-units", action="store_true",
                   help="keep the cube's flux unit instead of erg/s/cm2/A")
    add_layer_options(p)
    p.set_defaults(run=run)
    return p


def _target_and_line(args, cubes, products):
    """Target mask, redshift and measured line from options, else from the products."""
    from ..io import read_layer_map
    from ..pipeline import automatic_layer_map

    z, line, centre, width = args.z, args.line, args.obs_wave, args.width
    for product in products:
        params = product.params
        if z is None and line is None and centre is None and isinstance(params.get("z"), float):
            z = params["z"]
            line = params.get("line")
        if centre is None and line is None and isinstance(params.get("centre_um"), float):
            centre = params["centre_um"]
            width = float(params.get("width_kms", width))
    if args.layers:
        layer_map = read_layer_map(args.layers, cubes[0].shape[1:])
        source = f"--layers {args.layers}"
    else:
        found = next((p for p in products if p.layer_map is not None), None)
        if found is not None:
            layer_map, source = found.layer_map, f"LAYERS of {found.path.name}"
        elif args.line is not None or args.obs_wave is not None:
            info = automatic_layer_map(cubes[0], line=args.line, z=args.z,
                                       obs_wave=args.obs_wave, width_kms=args.width,
                                       threshold=args.snr_threshold, n_layers=args.n_layers)
            layer_map, source = info.layer_map, "automatic (from the first cube)"
        else:
            raise OptionError("no target mask: none of the cubes has a LAYERS extension; "
                              "give --layers FILE or --line/--z (or --obs-wave)")
    return layer_map > 0, source, z, line, centre, width


def run(args):
    from ..io import read_cube
    from ..io.output import check_output_path
    from ..io.product import read_product
    from ..report import compare_cubes, format_comparison, save_comparison_figure

    if args.labels and len(args.labels) != len(args.cubes):
        raise OptionError(f"--labels: {len(args.labels)} labels for {len(args.cubes)} cubes")
    if args.reference is not None and not 1 <= args.reference <= len(args.cubes):
        raise OptionError(f"--reference {args.reference}: expected 1..{len(args.cubes)}")
    out = check_output_path(args.out, inputs=args.cubes, overwrite=args.overwrite,
                            option="--out")
    cubes = [read_cube(path) for path in args.cubes]
    products = [read_product(path, cube=cube) for path, cube in zip(args.cubes, cubes,
                                                                      strict=True)]
    target, source, z, line, centre, width = _target_and_line(args, cubes, products)
    labels = args.labels or [Path(p).name for p in args.cubes]
    comp = compare_cubes(cubes, target=target, labels=labels,
                         flags=[p.flags for p in products], z=z, line=line,
                         centre_um=centre, width_kms=width,
                         wave_range=tuple(args.range) if args.range else None,
                         nsigma=args.nsigma, flam=not args.native_units)
    print(f"target: {comp.n_target} spaxels ({source})")
    print(format_comparison(comp))
    reference = None if args.reference is None else args.reference - 1
    save_comparison_figure(comp, out, reference=reference,
                           wave_range=tuple(args.range) if args.range else None)
    print(f"wrote {out}")
    return 0
