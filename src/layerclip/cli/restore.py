"""``layerclip restore CLEANED.fits -o RESTORED.fits``: give back the input, byte for byte.

Uses the ``ORIGINAL``/``ORIGHDR`` undo tables a cleaned file carries: every
replaced voxel gets its original SCI, ERR (or variance) and DQ values back, the
original headers return, and the extensions layerclip added are dropped.
"""

from ..io.undo import restore_file

NAME = "restore"


def add_parser(sub):
    p = sub.add_parser(NAME, help="undo a cleaning: rebuild the input file exactly",
                       description=__doc__)
    p.add_argument("cleaned", help="a file written by 'layerclip clean'")
    p.add_argument("-o", "--output", required=True, help="restored FITS file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(run=run)
    return p


def run(args):
    written = restore_file(args.cleaned, args.output, overwrite=args.overwrite)
    for out in written.values():
        print(f"wrote {out}")
    return 0
