"""``layerclip report CLEANED.fits [--original IN.fits] --out DIR``: the diagnostics page."""

from ..errors import OptionError

NAME = "report"


def spaxel_list(text):
    """Parse ``"y,x;y,x"`` into a list of (y, x)."""
    out = []
    for item in text.replace(" ", "").split(";"):
        if not item:
            continue
        try:
            y, x = (int(v) for v in item.split(","))
        except ValueError:
            raise OptionError(f"spaxels {text!r}: expected 'y,x;y,x;...' with whole "
                              "numbers") from None
        out.append((y, x))
    return out


def add_report_options(parser):
    """Options shared by ``report`` and ``clean --report``."""
    group = parser.add_argument_group("report")
    group.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"),
                       help="spectral range (microns) for the leftover-spike count and "
                            "Fig. 4 (default: everything)")
    group.add_argument("--nsigma", type=float, default=5.0,
                       help="spike threshold in noise sigmas (default 5)")
    group.add_argument("--native-units", action="store_true",
                       help="keep the cube's flux unit instead of erg/s/cm2/A")
    group.add_argument("--sky-slice", type=int, help="sky benchmark slice (plane index)")
    group.add_argument("--target-slice", type=int, help="target benchmark slice")
    group.add_argument("--sky-spaxels", type=spaxel_list, metavar="Y,X;Y,X",
                       help="sky benchmark spaxels")
    group.add_argument("--target-spaxels", type=spaxel_list, metavar="Y,X;Y,X",
                       help="target benchmark spaxels")


def report_kwargs(args):
    return {"wave_range": tuple(args.range) if args.range else None,
            "nsigma": args.nsigma, "flam": not args.native_units,
            "sky_slice": args.sky_slice, "target_slice": args.target_slice,
            "sky_spaxels": args.sky_spaxels, "target_spaxels": args.target_spaxels}


def add_parser(sub):
    p = sub.add_parser(NAME, help="write the diagnostics report of a cleaned cube",
                       description=__doc__)
    p.add_argument("cleaned", help="cube written by layerclip clean")
    p.add_argument("--original", metavar="IN.fits",
                   help="the cube before cleaning (default: the input named in the "
                        "HISTORY, if it sits next to the cleaned file)")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    add_report_options(p)
    p.set_defaults(run=run)
    return p


def describe(result):
    """Lines the CLI prints after writing a report."""
    from ..report import format_comparison

    lines = [format_comparison(result.comparison)]
    lines.append(f"figures: {', '.join(p.name for p in result.figures.values())}")
    lines.append(f"wrote {result.html}")
    return "\n".join(lines)


def run(args):
    from ..report import report_file

    result = report_file(args.cleaned, out=args.out, original=args.original,
                         overwrite=args.overwrite, **report_kwargs(args))
    print(describe(result))
    return 0
