"""``layerclip batch RECIPE.toml...``: clean every cube of one or more recipes on Dask.

Cubes run in parallel on a local cluster of worker processes (``--workers``), or
on a running Dask scheduler (``--scheduler tcp://host:8786``). A progress bar
shows cubes as they finish; a table at the end gives, per cube, the replaced
voxels per group, the time, and the output or the error. A failing cube does not
stop the others. Outputs that are complete and up to date (same recipe settings,
same input bytes: fingerprints recorded in their headers) are skipped, so an
interrupted batch resumes where it stopped.
"""

import logging
import sys
import time

from ..batch import jobs_from_recipes, run_batch, summary_table

NAME = "batch"


def add_parser(sub):
    p = sub.add_parser(NAME, help="clean every cube of recipe files, in parallel (Dask)",
                       description=__doc__)
    p.add_argument("recipes", nargs="+", metavar="RECIPE.toml", help="recipe files")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of a running dask.distributed scheduler "
                        "(default: start a local cluster)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes of the local cluster (default: one per CPU, "
                        "at most one per cube)")
    p.add_argument("--threads", action="store_true",
                   help="local workers are threads of this process instead of processes")
    p.add_argument("--cube", action="append", metavar="NAME",
                   help="only the recipe entries with this name (repeatable)")
    p.add_argument("--no-figures", action="store_true",
                   help="do not draw the layer-map figures")
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs and layer maps that layerclip did not make, or "
                        "that differ from what the recipe makes now")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


class ProgressBar:
    """A one-line progress bar on stderr (one line per cube when not a terminal)."""

    def __init__(self, total, *, stream=None, width=30):
        self.total = total
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self.failed = 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        if self.tty:
            self._draw(0, "")

    def _draw(self, done, last):
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        text = (f"[{bar}] {done}/{self.total} cubes, {self.failed} failed, "
                f"{elapsed:.0f} s {last}")
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, result, done, total):
        self.failed += result.status == "failed"
        self._draw(done, f"{result.name}: {result.status}")
        if self.tty and done == total:
            self.stream.write("\n")


def run(args):
    jobs = jobs_from_recipes(args.recipes, names=args.cube, figure=not args.no_figures)
    if not jobs:
        print("no cubes in the recipes")
        return 0
    # Dask's own logging is for debugging the cluster, not for users of this command.
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.ERROR)
    progress = None if args.no_progress else ProgressBar(len(jobs))
    where = args.scheduler or (f"local cluster of {args.workers or 'auto'} "
                               f"{'threads' if args.threads else 'processes'}")
    print(f"{len(jobs)} cubes from {len(args.recipes)} recipe(s) on {where}", flush=True)
    results = run_batch(jobs, scheduler=args.scheduler, workers=args.workers,
                        processes=not args.threads, overwrite=args.overwrite,
                        on_result=progress)
    print(summary_table(results))
    return 1 if any(r.status == "failed" for r in results) else 0
