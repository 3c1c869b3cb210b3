"""``layerclip clean INPUT -o OUTPUT``: clean one cube."""

from ..clip import METHODS
from ..pipeline import clean_file

NAME = "clean"


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
    group.add_argument("--n-layers", type=int, default=3,
                       help="target S/N layers wanted (default 3)")


def add_parser(sub):
    p = sub.add_parser(NAME, help="clean one cube", description=__doc__)
    p.add_argument("input", help="input cube (JWST *_s3d.fits layout)")
    p.add_argument("-o", "--output", required=True, help="output FITS file")
    p.add_argument("--method", choices=METHODS, default=METHODS[0],
                   help=f"clipping method (default {METHODS[0]})")
    p.add_argument("--sigma", type=float, default=5.0, help="clipping threshold (default 5)")
    p.add_argument("--maxiters", type=int, default=5, help="clipping passes (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_layer_options(p)
    p.set_defaults(run=run)
    return p


def run(args):
    result, info = clean_file(
        args.input, args.output, method=args.method, sigma=args.sigma,
        maxiters=args.maxiters, layers=args.layers, line=args.line, z=args.z,
        obs_wave=args.obs_wave, width_kms=args.width, threshold=args.snr_threshold,
        n_layers=args.n_layers, overwrite=args.overwrite,
    )
    print(summary(result, info))
    print(f"wrote {args.output}")
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
