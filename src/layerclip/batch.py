"""Many cubes at once: every cube named in recipe files, cleaned on Dask.

:func:`run_batch` submits one task per cube to a ``dask.distributed`` cluster
(a :class:`~distributed.LocalCluster` of processes by default, or an existing
scheduler), collects the results as they complete and returns one
:class:`JobResult` per cube. A cube that fails is reported with its error and
does not stop the others.

Resuming: every output records, in its primary header, a fingerprint of the
settings that made it (``LCRECIPE``: method, parameters, line, layers file
contents, ... and the layerclip version) and of the input bytes (``LCINPUT``:
SHA-256 of every file of the cube). A cube whose output exists, is complete (it
carries ``CLIPPED`` and ``LAYERS``; outputs appear only once complete, through
an atomic rename) and has both fingerprints equal to the current ones is
skipped, so re-running an interrupted batch only does what is left. An output
made from other settings or another input is replaced; a file at the output path
that layerclip did not make is refused unless ``overwrite``.
"""

import dataclasses
import hashlib
import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import LayerclipError, OptionError

__all__ = ["Job", "JobResult", "run_job", "run_batch", "jobs_from_recipes", "job_fingerprint",
           "input_digest", "output_is_current", "summary_table", "RECIPE_KEY", "INPUT_KEY"]

log = logging.getLogger(__name__)

RECIPE_KEY = "LCRECIPE"
INPUT_KEY = "LCINPUT"
_PATH_OPTIONS = ("layers",)


@dataclass(frozen=True)
class Job:
    """One cube to clean.

    Attributes
    ----------
    name : str
        Label for progress and the summary (unique within a batch).
    input, output : str
        Input cube and output file.
    options : dict
        Keyword arguments of :func:`layerclip.pipeline.clean_file` (``method``,
        ``sigma``, ``line``, ``z``, ``layers``, ``read_options``, ``block_planes``...).
    recipe : str
        The recipe file the job comes from (for messages).
    entry : `~layerclip.recipe.CubeEntry`, optional
        The recipe entry: its layer map is built (or reused) by the worker, as
        :func:`layerclip.recipe.clean_recipe` does, before cleaning.
    figure : bool
        Also draw the layer-map figure of a recipe entry.
    """

    name: str
    input: str
    output: str
    options: dict = field(default_factory=dict)
    recipe: str = ""
    entry: object = None
    figure: bool = True


@dataclass
class JobResult:
    """What happened to one cube.

    ``status`` is ``"done"``, ``"skipped"`` (output complete and up to date) or
    ``"failed"`` (``error`` says why).
    """

    name: str
    status: str
    output: str
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)
    n_flagged: int = 0
    error: str = ""
    worker: str = ""

    @property
    def ok(self):
        return self.status in ("done", "skipped")


def _sha256_file(path, digest=None):
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            digest.update(chunk)
    return digest


def input_digest(path, read_options=None):
    """SHA-256 (hex, 32 chars) over the bytes of every file of the cube in ``path``."""
    from .io.formats import detect_layout

    layout = detect_layout(path, **(read_options or {}))
    digest = hashlib.sha256()
    for item in layout.files:
        digest.update(item.name.encode())
        _sha256_file(item, digest)
    return digest.hexdigest()[:32]


def _canonical(value):
    """JSON-able form of recipe settings; existing files enter with their contents."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path) or (isinstance(value, str) and os.sep in value):
        path = Path(value)
        if path.is_file():
            return {"file": path.name, "sha256": _sha256_file(path).hexdigest()}
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def job_fingerprint(job):
    """SHA-256 (hex, 32 chars) of everything in ``job`` that decides the output's contents.

    Options and the recipe entry's mask settings are serialised canonically;
    files they name (a layer map, region files) enter with their contents, so
    editing a mask re-cleans the cubes that use it.
    """
    options = {}
    for key, value in sorted(job.options.items()):
        if key in ("overwrite",):
            continue
        if key in _PATH_OPTIONS and value is not None and Path(value).is_file():
            value = {"file": Path(value).name, "sha256": _sha256_file(value).hexdigest()}
        options[key] = _canonical(value)
    entry = None
    if job.entry is not None:
        entry = {"spec": _canonical(job.entry.spec),
                 "layers_file": _canonical(job.entry.layers_file),
                 "clean": _canonical(job.entry.clean_options())}
    text = json.dumps({"layerclip": __version__, "options": options, "entry": entry},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def jobs_from_recipes(paths, *, names=None, figure=True):
    """One :class:`Job` per cube of the recipe files ``paths``.

    Parameters
    ----------
    paths : sequence of str or Path
        TOML recipes (see :mod:`layerclip.recipe`).
    names : sequence of str, optional
        Only the cubes with these entry names (in every recipe that has them).
    figure : bool
        Draw the layer-map figures.
    """
    from .recipe import load_recipe

    jobs = []
    for path in paths:
        recipe = load_recipe(path)
        entries = recipe.cubes if not names else [c for c in recipe.cubes if c.name in names]
        for entry in entries:
            jobs.append(Job(name=f"{recipe.name}/{entry.name}", input=str(entry.input),
                            output=str(entry.output), options=entry.clean_options(),
                            recipe=str(recipe.path), entry=entry, figure=figure))
    if names:
        missing = set(names) - {j.entry.name for j in jobs}
        if missing:
            raise OptionError(f"--cube {sorted(missing)[0]!r}: no such cube in the recipes")
    return jobs


def output_is_current(output, recipe_hash, input_hash):
    """True when ``output`` is a complete layerclip output made with these fingerprints.

    Returns
    -------
    bool or None
        None when ``output`` exists but was not made by a layerclip batch.
    """
    from astropy.io import fits

    output = Path(output)
    if not output.exists():
        return False
    try:
        with fits.open(output, memmap=True) as hdul:
            names = {h.name for h in hdul}
            primary = hdul[0].header
            recorded = (primary.get(RECIPE_KEY), primary.get(INPUT_KEY))
    except Exception:  # unreadable (e.g. truncated by hand): not ours to trust
        return None
    if recorded == (None, None):
        return None
    return {"CLIPPED", "LAYERS"} <= names and recorded == (recipe_hash, input_hash)


def run_job(job, *, overwrite=False):
    """Clean one cube unless its output is already current; never raises.

    Returns
    -------
    JobResult
    """
    from .pipeline import clean_file
    from .recipe import entry_layer_map_file

    start = time.perf_counter()
    worker = f"pid {os.getpid()}"
    try:
        options = dict(job.options)
        recipe_hash = job_fingerprint(job)
        input_hash = input_digest(job.input, options.get("read_options"))
        current = output_is_current(job.output, recipe_hash, input_hash)
        if current:
            return JobResult(job.name, "skipped", job.output,
                             time.perf_counter() - start, worker=worker)
        if current is None and not overwrite:
            raise OptionError(f"{job.output}: exists and was not made by layerclip batch; "
                              "remove it or use --overwrite")
        if job.entry is not None:
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)
            options["layers"] = entry_layer_map_file(job.entry, overwrite=overwrite,
                                                     figure=job.figure)
        cards = {RECIPE_KEY: (recipe_hash, "layerclip settings sha256"),
                 INPUT_KEY: (input_hash, "layerclip input sha256")}
        result, _ = clean_file(job.input, job.output, overwrite=True, primary_cards=cards,
                               **options)
        return JobResult(job.name, "done", job.output, time.perf_counter() - start,
                         counts=result.counts_per_group, n_flagged=result.n_flagged,
                         worker=worker)
    except LayerclipError as exc:
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug or an unexpected failure: report it, go on
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        error = (f"{type(exc).__name__}: {exc} "
                 f"({Path(frame.filename).name}:{frame.lineno})")
    log.warning("%s: %s", job.name, error)
    return JobResult(job.name, "failed", job.output, time.perf_counter() - start,
                     error=error, worker=worker)


def _client(scheduler, workers, processes):
    from distributed import Client, LocalCluster

    if scheduler is not None:
        return Client(scheduler), None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                           dashboard_address=":0")
    return Client(cluster), cluster


def run_batch(jobs, *, scheduler=None, workers=None, processes=True, overwrite=False,
              on_result: Callable | None = None, client=None):
    """Clean every job on a Dask cluster; one failure does not stop the others.

    Parameters
    ----------
    jobs : sequence of Job
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler (``tcp://host:8786``);
        by default a :class:`~distributed.LocalCluster` is started for the batch.
    workers : int, optional
        Workers of the local cluster (default: CPU count, at most one per job).
    processes : bool
        Local workers are processes (default) or threads.
    overwrite : bool
        Replace files at output paths that layerclip did not make.
    on_result : callable, optional
        Called with ``(JobResult, n_done, n_total)`` as each cube completes (a
        progress display).
    client : `distributed.Client`, optional
        Use this client (and its cluster) instead of making one.

    Returns
    -------
    list of JobResult
        In the order of ``jobs``.
    """
    from distributed import as_completed

    jobs = list(jobs)
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise OptionError("two cubes in the batch have the same name; names must be unique")
    outputs = [str(Path(j.output).resolve()) for j in jobs]
    if len(set(outputs)) != len(outputs):
        dup = sorted({o for o in outputs if outputs.count(o) > 1})
        raise OptionError(f"two cubes would write the same output {dup[0]}")
    if not jobs:
        return []
    if workers is None:
        workers = min(os.cpu_count() or 1, len(jobs))
    if workers is not None and int(workers) < 1:
        raise OptionError(f"--workers {workers}: expected a positive whole number")
    own_client, cluster = (client, None) if client is not None else _client(
        scheduler, int(workers), processes)
    results = {}
    try:
        # Keys unique per run: a key reused while the scheduler still holds the
        # previous run's result would return that result instead of running again.
        run_id = uuid.uuid4().hex[:8]
        futures = {own_client.submit(run_job, job, overwrite=overwrite, pure=False,
                                     key=f"layerclip-{run_id}-{i}-{job.name}"): job
                   for i, job in enumerate(jobs)}
        for n, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            try:
                res = future.result()
            except Exception as exc:  # the worker died (killed, out of memory ...)
                res = JobResult(job.name, "failed", job.output,
                                error=f"worker lost: {type(exc).__name__}: {exc}")
            results[job.name] = res
            if on_result is not None:
                on_result(res, n, len(jobs))
    finally:
        if client is None:
            own_client.close()
            if cluster is not None:
                cluster.close()
    return [results[j.name] for j in jobs]


def summary_table(results):
    """A plain-text table: per cube, status, replaced voxels per group, time, output or error."""
    rows = [("cube", "status", "replaced", "per group", "time", "output / error")]
    for r in results:
        groups = " ".join(f"{'sky' if g == 0 else f'L{g}'}={n}" for g, n in r.counts.items())
        rows.append((r.name, r.status, str(r.n_flagged) if r.status == "done" else "-",
                     groups or "-", f"{r.seconds:.1f}s", r.error or r.output))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True))
             + "  " + row[5] for row in rows]
    n_failed = sum(r.status == "failed" for r in results)
    n_skipped = sum(r.status == "skipped" for r in results)
    lines.append(f"{len(results)} cubes: {len(results) - n_failed - n_skipped} cleaned, "
                 f"{n_skipped} up to date (skipped), {n_failed} failed")
    return "\n".join(lines)
