"""``layerclip info CLEANED.fits``: what was done to a cleaned file.

Prints the layerclip version, method and parameters, the layer map's origin,
replaced voxels per group (sky, layer 1..N) and whether the file can be restored.
"""

from ..info import file_info

NAME = "info"


def add_parser(sub):
    p = sub.add_parser(NAME, help="summarise what layerclip did to a cleaned file",
                       description=__doc__)
    p.add_argument("cleaned", nargs="+", help="file(s) written by 'layerclip clean'")
    p.set_defaults(run=run)
    return p


def run(args):
    for path in args.cleaned:
        print(file_info(path).to_text())
    return 0
