"""``layerclip demo``: simulate a NIRSpec-like cube with known artifacts and clean it."""

from ..demo import run_demo

NAME = "demo"


def add_parser(sub):
    p = sub.add_parser(NAME, help="run the built-in demo", description=__doc__)
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--seed", type=int, default=2024, help="seed of the synthetic cube")
    p.add_argument("--method", default="robust", help="clipping method (default robust)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files from an earlier demo run in --out")
    p.set_defaults(run=run)
    return p


def run(args):
    run_demo(args.out, seed=args.seed, method=args.method, overwrite=args.overwrite)
    return 0
