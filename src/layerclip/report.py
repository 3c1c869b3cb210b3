"""The diagnostics report: figures as PNG plus one self-contained HTML page.

:func:`compare_cubes` computes the Fig. 4 comparison (integrated target spectra,
leftover spikes, fraction replaced, line flux) for any list of cubes;
:func:`build_report` draws every figure of the paper for one cleaning and writes the
page; :func:`report_file` does the same from a cleaned product on disk. The page
embeds its figures as base64 PNG, so it can be opened anywhere or mailed.
"""

import base64
import html
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .diagnostics import (
    FLAM_UNIT,
    Benchmarks,
    choose_benchmarks,
    continuum_subtract,
    count_spikes,
    detect_line_planes,
    flam_factor,
    group_stats,
    integrated_spectrum,
    line_flux,
    line_mask_from_lines,
    robust_sigma,
)
from .errors import InputFileError, LayerclipError, LayerMapError, OptionError, OutputError
from .io.cube import OUTLIER

__all__ = ["Comparison", "ReportResult", "compare_cubes", "build_report", "report_file",
           "check_report_dir", "fraction_replaced", "pixel_area_sr", "format_comparison",
           "save_comparison_figure"]

log = logging.getLogger(__name__)

FIGURES = {
    "fig2_layers": "Layers view over the target benchmark slice (paper Fig. 2)",
    "fig3_sky_slice": "Sky benchmark slice: original, cleaned, replaced voxels (Fig. 3)",
    "fig3_target_slice": "Target benchmark slice: original, cleaned, replaced voxels (Fig. 3)",
    "fig4_integrated": "Integrated target spectrum and residual histogram (Fig. 4)",
    "benchmarks_sky": "Sky benchmark spaxels before and after",
    "benchmarks_target": "Target benchmark spaxels before and after",
}


# ----------------------------------------------------------------------- comparison


def pixel_area_sr(cube):
    """Solid angle of one spaxel in steradian: PIXAR_SR, else from the celestial WCS."""
    for key in ("PIXAR_SR",):
        value = cube.header.get(key)
        if value is not None:
            return float(value)
    wcs = cube.celestial_wcs
    if wcs is not None and wcs.has_celestial:
        from astropy.wcs.utils import proj_plane_pixel_area

        try:
            return float(proj_plane_pixel_area(wcs) * (np.pi / 180) ** 2)
        except Exception:  # a WCS without celestial units: no area
            return None
    return None


def fraction_replaced(cube, flags=None):
    """Fraction of usable voxels replaced: CLIPPED flags, else the DQ OUTLIER bit.

    Returns None when the cube carries neither.
    """
    usable = ~cube.excluded
    if flags is None:
        if cube.dq is None:
            return None
        flags = (cube.dq & OUTLIER) != 0
    n = int(usable.sum())
    return float((flags & usable).sum() / n) if n else 0.0


@dataclass
class Comparison:
    """Fig. 4 numbers for a set of cubes of the same field (same grid).

    Attributes
    ----------
    labels : list of str
    wavelength : ndarray
    unit : str
        Unit of ``spectra`` (erg/s/cm2/A when converted, else BUNIT summed).
    spectra, residuals : list of ndarray
        Integrated target spectra and their continuum-subtracted, line-masked version.
    spikes : list of SpikeCount
    fractions : list of float or None
        Fraction of voxels replaced.
    line_fluxes : list of float or None
    line_flux_unit : str
    line_mask : ndarray of bool
    line_name : str or None
    n_target : int
    noise : float
        Common 1-sigma noise the spike threshold is based on.
    """

    labels: list
    wavelength: np.ndarray
    unit: str
    spectra: list
    residuals: list
    spikes: list
    fractions: list
    line_fluxes: list
    line_flux_unit: str
    line_mask: np.ndarray
    line_name: str | None = None
    n_target: int = 0
    noise: float = float("nan")
    notes: list = field(default_factory=list)

    def rows(self):
        """One dict per cube (for tables)."""
        return [{"label": lab, "spikes": sp.count, "fraction": fr, "line_flux": lf}
                for lab, sp, fr, lf in zip(self.labels, self.spikes, self.fractions,
                                           self.line_fluxes, strict=True)]


def compare_cubes(cubes, *, target, labels=None, flags=None, z=None, line=None,
                  centre_um=None, width_kms=750.0, line_mask=None, detect_lines=True,
                  wave_range=None, nsigma=5.0, flam=True, window=51):
    """Integrated target spectra, leftover spikes, fraction replaced and line flux.

    Parameters
    ----------
    cubes : sequence of Cube
        Cubes of the same field on the same grid (e.g. no cleaning, jwst pipeline,
        layerclip, both).
    target : ndarray of bool, shape (ny, nx)
        Target spaxels integrated (e.g. ``layer_map > 0``).
    labels : sequence of str, optional
    flags : sequence of (ndarray or None), optional
        Replaced-voxel flags per cube (CLIPPED); else the DQ OUTLIER bit is used.
    z : float, optional
        Redshift: every line of :data:`layerclip.lines.LINES` at ``z`` is masked.
    line : str, optional
        Name of the line whose flux is measured (with ``z``); or give ``centre_um``.
    centre_um : float, optional
        Observed wavelength of the measured line, microns.
    width_kms : float, optional
        Width of the line-flux window (default 750 km/s).
    line_mask : ndarray of bool, optional
        Extra planes to mask.
    detect_lines : bool, optional
        Also mask line planes found in the first cube (:func:`detect_line_planes`).
    wave_range : (float, float), optional
        Spectral range in which spikes are counted, microns.
    nsigma : float, optional
        Spike threshold (default 5) in units of the common noise: the smallest robust
        scatter among the cubes' residuals (the cleanest cube's scatter is the best
        estimate of the noise they share).
    flam : bool, optional
        Convert to erg/s/cm2/A when the unit allows (default True).
    window : int, optional
        Running-median width for the continuum, planes.

    Returns
    -------
    Comparison
    """
    from .lines import line_window, observed_wavelength

    cubes = list(cubes)
    if not cubes:
        raise OptionError("compare: no cubes given")
    labels = list(labels) if labels else [c.name for c in cubes]
    if len(labels) != len(cubes):
        raise OptionError(f"--labels: {len(labels)} labels for {len(cubes)} cubes")
    first = cubes[0]
    for cube, label in zip(cubes[1:], labels[1:], strict=True):
        if cube.shape != first.shape:
            raise OptionError(f"{label}: shape {cube.shape} differs from {labels[0]} "
                              f"{first.shape}; compared cubes must share a grid")
    target = np.asarray(target, dtype=bool)
    if target.shape != first.shape[1:]:
        raise LayerMapError(f"target mask shape {target.shape} does not match the cubes' "
                            f"spatial shape {first.shape[1:]}")
    wave = first.wavelength
    notes = []
    unit = first.bunit or "flux"
    factor = None
    if flam:
        try:
            factor = flam_factor(wave, unit=first.bunit, pixel_area_sr=pixel_area_sr(first))
            unit = FLAM_UNIT
        except OptionError as exc:
            notes.append(f"flux left in cube units: {exc}")
    if factor is None:
        unit = f"{unit} (summed over spaxels)"
    mask = np.zeros(wave.shape, dtype=bool)
    if line_mask is not None:
        mask |= np.asarray(line_mask, dtype=bool)
    if z is not None:
        mask |= line_mask_from_lines(wave, z=z, air=first.air)
    if detect_lines:
        mask |= detect_line_planes(first.sci, first.err, target, excluded=first.excluded,
                                   window=window)
    line_name = None
    planes = None
    if centre_um is None and line is not None and z is not None:
        line_name, centre_um = observed_wavelength(line, z, air=first.air)
    if centre_um is not None:
        planes = line_window(wave, centre_um, width_kms)
        line_name = line_name or line or f"{centre_um:.5f} um"
        mask[planes] = True
    spectra, residuals = [], []
    for cube in cubes:
        spec = integrated_spectrum(cube.sci, target, excluded=cube.excluded)
        if factor is not None:
            spec = spec * factor
        res, _ = continuum_subtract(spec, mask=mask, window=window)
        spectra.append(spec)
        residuals.append(res)
    if wave_range is not None:
        lo, hi = sorted(wave_range)
        inside = (wave >= lo) & (wave <= hi)
        if not inside.any():
            raise OptionError(f"--range {lo:g} {hi:g}: outside the cubes' wavelength range "
                              f"{wave.min():.5g}-{wave.max():.5g} um")
        sigmas = [robust_sigma(np.where(inside, r, np.nan)) for r in residuals]
    else:
        sigmas = [robust_sigma(r) for r in residuals]
    finite = [s for s in sigmas if np.isfinite(s) and s > 0]
    noise = min(finite) if finite else float("nan")
    spikes = [count_spikes(r, wavelength_um=wave, wave_range=wave_range, nsigma=nsigma,
                           noise=noise) for r in residuals]
    flags = list(flags) if flags is not None else [None] * len(cubes)
    fractions = [fraction_replaced(c, f) for c, f in zip(cubes, flags, strict=True)]
    fluxes = [None] * len(cubes)
    flux_unit = ""
    if planes is not None:
        fluxes = [line_flux(s, wave, planes, mask=mask, window=window,
                            per_angstrom=factor is not None) for s in spectra]
        flux_unit = "erg / (s cm2)" if factor is not None else f"{first.bunit or 'flux'} um"
    return Comparison(labels=labels, wavelength=wave, unit=unit, spectra=spectra,
                      residuals=residuals, spikes=spikes, fractions=fractions,
                      line_fluxes=fluxes, line_flux_unit=flux_unit, line_mask=mask,
                      line_name=line_name, n_target=int(target.sum()), noise=noise,
                      notes=notes)


def format_comparison(comp):
    """The comparison as a plain-text table."""
    width = max(12, *(len(lab) for lab in comp.labels)) + 2
    head = f"{'cube':<{width}}{'spikes':>8}{'replaced':>11}"
    flux_title = f"line flux [{comp.line_flux_unit}]" if comp.line_name else ""
    rows = [head + (f"  {comp.line_name} {flux_title}" if flux_title else "")]
    for row in comp.rows():
        frac = "n/a" if row["fraction"] is None else f"{100 * row['fraction']:.3f}%"
        text = f"{row['label']:<{width}}{row['spikes']:>8}{frac:>11}"
        if row["line_flux"] is not None:
            text += f"  {row['line_flux']:.4g}"
        rows.append(text)
    sp = comp.spikes[0]
    rng = ("the whole spectrum" if sp.wave_range is None
           else f"{sp.wave_range[0]:.5g}-{sp.wave_range[1]:.5g} um")
    rows.append(f"spikes: peaks beyond {sp.nsigma:g} x {comp.noise:.3g} {comp.unit} in the "
                f"continuum-subtracted, line-masked integrated spectrum of {comp.n_target} "
                f"target spaxels, {rng} ({sp.n_planes} planes; "
                f"{int(comp.line_mask.sum())} line planes masked)")
    rows.extend(comp.notes)
    return "\n".join(rows)


def save_comparison_figure(comp, path, *, reference=None, wave_range=None, dpi=110):
    """Draw the Fig. 4 comparison into ``path`` (PNG). ``reference``: index drawn grey."""
    from matplotlib.figure import Figure

    from .plotting.diagnostics import plot_integrated_comparison

    idx = [i for i in range(len(comp.labels)) if i != reference]
    fig = Figure(figsize=(13, 4.3), layout="constrained")
    plot_integrated_comparison(
        comp.wavelength, [comp.spectra[i] for i in idx], [comp.residuals[i] for i in idx],
        labels=[comp.labels[i] for i in idx],
        reference=None if reference is None else comp.spectra[reference],
        reference_label="no cleaning" if reference is None else comp.labels[reference],
        reference_residual=None if reference is None else comp.residuals[reference],
        reference_spikes=None if reference is None else comp.spikes[reference],
        wave_range=wave_range, unit=comp.unit, spikes=[comp.spikes[i] for i in idx],
        line_mask=comp.line_mask, fig=fig)
    fig.savefig(path, dpi=dpi)
    return Path(path)


# --------------------------------------------------------------------------- report


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and measured."""

    html: Path
    figures: dict
    benchmarks: Benchmarks
    comparison: Comparison
    stats: dict
    layer_counts: list
    spikes_before: int | None
    spikes_after: int


def _layer_counts(layer_map, flags):
    nw = flags.shape[0]
    rows = []
    for g in np.unique(layer_map):
        if g < 0:
            continue
        members = layer_map == g
        n = int(flags[:, members].sum())
        rows.append({"group": "sky" if g == 0 else f"layer {int(g)}",
                     "spaxels": int(members.sum()), "replaced": n,
                     "per_plane": n / nw})
    return rows


def check_report_dir(out, *, overwrite=False):
    """Refuse a report folder that is a file, holds a report (without overwrite) or
    cannot be created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"report folder {out}: exists and is not a folder")
    if (out / "report.html").exists() and not overwrite:
        raise OutputError(f"report folder {out}: report.html already exists "
                          "(use --overwrite)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise OutputError(f"report folder {out}: {parent} is not writable")
    return out


def _png(fig, path, dpi):
    fig.savefig(path, dpi=dpi)
    return Path(path)


def build_report(cleaned, flags, layer_map, *, out, original=None, title=None, params=None,
                 history=(), benchmarks=None, sky_slice=None, target_slice=None,
                 sky_spaxels=None, target_spaxels=None, z=None, line=None, centre_um=None,
                 width_kms=750.0, wave_range=None, nsigma=5.0, flam=True, window=40,
                 dpi=110, overwrite=False):
    """Draw the paper's diagnostics for one cleaning and write the HTML report.

    Parameters
    ----------
    cleaned : Cube
        The cleaned cube.
    flags : ndarray of bool, shape (nw, ny, nx)
        True where a voxel was replaced.
    layer_map : ndarray of int, shape (ny, nx)
    out : str or Path
        Folder for the PNG files and ``report.html`` (created if missing).
    original : Cube, optional
        The cube before cleaning (without it, "before" views are left out).
    title : str, optional
    params : dict, optional
        Parameters shown in the report (e.g. from the HISTORY).
    history : iterable of str, optional
        Provenance lines shown verbatim.
    benchmarks : Benchmarks, optional
        Benchmarks chosen beforehand (default: :func:`choose_benchmarks`).
    sky_slice, target_slice, sky_spaxels, target_spaxels : optional
        User choices passed to :func:`choose_benchmarks` (the rest stays automatic).
    z, line, centre_um, width_kms :
        Line masking and the measured line (see :func:`compare_cubes`).
    wave_range : (float, float), optional
        Spectral range for the spike count and Fig. 4, microns.
    nsigma : float, optional
        Spike threshold.
    flam : bool, optional
        Show integrated spectra in erg/s/cm2/A where the unit allows.
    window : int, optional
        Planes either side of a benchmark slice in the spaxel spectra.
    dpi : int, optional
    overwrite : bool, optional
        Replace an existing ``report.html`` in ``out``.

    Returns
    -------
    ReportResult
    """
    from matplotlib.figure import Figure

    from .plotting import diagnostics as plots

    out = check_report_dir(out, overwrite=overwrite)
    page = out / "report.html"
    out.mkdir(parents=True, exist_ok=True)
    layer_map = np.asarray(layer_map)
    flags = np.asarray(flags, dtype=bool)
    if flags.shape != cleaned.shape:
        raise OptionError(f"flags shape {flags.shape} differs from the cube's {cleaned.shape}")
    if original is not None and original.shape != cleaned.shape:
        raise OptionError(f"--original: shape {original.shape} differs from the cleaned "
                          f"cube's {cleaned.shape}")
    before = original if original is not None else cleaned
    wave = cleaned.wavelength
    unit = cleaned.bunit
    if benchmarks is None:
        benchmarks = choose_benchmarks(before.sci, cleaned.sci, flags, layer_map,
                                       err=before.err, window=window, sky_slice=sky_slice,
                                       target_slice=target_slice, sky_spaxels=sky_spaxels,
                                       target_spaxels=target_spaxels)
    figures = {}
    k_sky, k_tgt = benchmarks.sky_slice, benchmarks.target_slice
    name_before = "original" if original is not None else "cleaned (original not given)"

    fig = Figure(figsize=(13, 4), layout="constrained")
    plots.plot_layers_slice(layer_map, before.sci[k_tgt], cleaned.sci[k_tgt], plane=k_tgt,
                            wavelength=wave, unit=unit, fig=fig)
    figures["fig2_layers"] = _png(fig, out / "fig2_layers.png", dpi)
    for key, k, spax in (("fig3_sky_slice", k_sky, benchmarks.sky_spaxels),
                         ("fig3_target_slice", k_tgt, benchmarks.target_spaxels)):
        fig = Figure(figsize=(13, 4), layout="constrained")
        plots.plot_slice_comparison(before.sci[k], cleaned.sci[k], flags[k], layer_map,
                                    plane=k, wavelength=wave, unit=unit, spaxels=spax,
                                    fig=fig)
        fig.axes[0].set_title(f"{name_before}\n{plots._plane_title(k, wave)}", fontsize=10)
        figures[key] = _png(fig, out / f"{key}.png", dpi)
    for key, k, spax, kinds, layers, group in (
            ("benchmarks_sky", k_sky, benchmarks.sky_spaxels, benchmarks.sky_kinds, None,
             "sky"),
            ("benchmarks_target", k_tgt, benchmarks.target_spaxels, benchmarks.target_kinds,
             benchmarks.target_layers, "target")):
        fig = Figure(figsize=(3.6 * max(len(spax), 1), 3.0), layout="constrained")
        plots.plot_benchmark_spectra(wave, before.sci, cleaned.sci, flags, spax, plane=k,
                                     kinds=kinds, layers=layers, group=group, window=window,
                                     unit=unit, fig=fig)
        figures[key] = _png(fig, out / f"{key}.png", dpi)

    target = layer_map > 0
    if not target.any():
        raise LayerMapError("the layer map has no target spaxels: nothing to integrate")
    cubes = [original, cleaned] if original is not None else [cleaned]
    labels = ["original", "cleaned"] if original is not None else ["cleaned"]
    comp = compare_cubes(cubes, target=target, labels=labels,
                         flags=[None, flags] if original is not None else [flags], z=z,
                         line=line, centre_um=centre_um, width_kms=width_kms,
                         wave_range=wave_range, nsigma=nsigma, flam=flam)
    figures["fig4_integrated"] = save_comparison_figure(
        comp, out / "fig4_integrated.png", reference=0 if original is not None else None,
        wave_range=wave_range, dpi=dpi)

    stats = {"sky": group_stats(before.sci[k_sky], cleaned.sci[k_sky], layer_map),
             "target": group_stats(before.sci[k_tgt], cleaned.sci[k_tgt], layer_map)}
    counts = _layer_counts(layer_map, flags)
    result = ReportResult(
        html=page, figures=figures, benchmarks=benchmarks, comparison=comp, stats=stats,
        layer_counts=counts,
        spikes_before=comp.spikes[0].count if original is not None else None,
        spikes_after=comp.spikes[-1].count)
    text = _html(result, cleaned=cleaned, original=original, title=title, params=params or {},
                 history=list(history))
    page.write_text(text, encoding="utf-8")
    log.info("wrote %s and %d figures", page, len(figures))
    return result


def original_from_undo(product):
    """The cube before cleaning, rebuilt from the product's undo table (``ORIGINAL``).

    Returns None when the product has no usable undo table.
    """
    from dataclasses import replace

    try:
        from .io.undo import read_undo

        record = read_undo(product.path)
    except (ImportError, LayerclipError) as exc:
        log.info("no undo table to rebuild the original from: %s", exc)
        return None
    cube = product.cube
    coords = np.asarray(record.coords)
    values = np.asarray(record.values.get("sci", np.zeros(0)))
    if values.dtype.kind != "f" or coords.ndim != 2 or coords.shape[0] != 3 or (
            coords.size and (coords.min() < 0
                             or (coords.max(axis=1) >= np.array(cube.shape)).any())):
        return None
    index = tuple(coords)
    sci = cube.sci.copy()
    sci[index] = values.astype(sci.dtype)
    err = cube.err.copy()
    noise = record.values.get("noise")
    if noise is not None and np.asarray(noise).dtype.kind == "f":
        noise = np.asarray(noise, dtype=float)
        column = str(record.members.get("noise", ("", 0, ""))[2]).upper()
        if column.startswith("VAR"):
            with np.errstate(invalid="ignore"):
                noise = np.sqrt(noise)
        err[index] = noise.astype(err.dtype)
    dq = cube.dq
    flags_dq = record.values.get("dq")
    if dq is not None and flags_dq is not None and np.asarray(flags_dq).dtype.kind in "iu":
        dq = dq.copy()
        dq[index] = np.asarray(flags_dq).astype(dq.dtype)
    elif dq is not None and coords.size:
        # NOTE: without recorded DQ values, undo what cleaning does to DQ (the OUTLIER bit).
        dq = dq.copy()
        dq[index] &= ~np.asarray(OUTLIER, dtype=dq.dtype)
    return replace(cube, sci=sci, err=err, dq=dq)


def report_file(cleaned_path, *, out, original=None, overwrite=False, read_options=None,
                **kwargs):
    """:func:`build_report` for a cleaned product on disk.

    Parameters
    ----------
    cleaned_path : str or Path
        A cube written by ``layerclip clean`` (with CLIPPED and LAYERS extensions).
    out : str or Path
        Report folder.
    original : str or Path, optional
        The cube before cleaning. By default the input named in the HISTORY is looked
        for next to the cleaned file; without it, "before" views are left out.
    overwrite : bool, optional
    read_options : dict, optional
        Layout keywords for reading ``original`` (see :func:`layerclip.io.read_cube`).
    **kwargs
        Passed to :func:`build_report` (``wave_range``, ``nsigma``, ``flam`` ...).

    Returns
    -------
    ReportResult
    """
    from .io import read_cube
    from .io.product import read_product

    product = read_product(cleaned_path)
    if product.flags is None or product.layer_map is None:
        raise InputFileError(f"{cleaned_path}: no CLIPPED/LAYERS extensions; expected a "
                             "cube written by layerclip clean")
    params = product.params
    if original is None and params.get("input"):
        guess = Path(cleaned_path).with_name(str(params["input"]))
        if guess.exists() and guess.resolve() != Path(cleaned_path).resolve():
            original = guess
            log.info("original cube found next to the product: %s", guess)
    orig_cube = read_cube(original, **(read_options or {})) if original is not None else None
    original_name = Path(original).name if original is not None else "not given"
    if orig_cube is None:
        orig_cube = original_from_undo(product)
        if orig_cube is not None:
            original_name = "rebuilt from the ORIGINAL (undo) table of the product"
    kwargs.setdefault("z", params.get("z") if isinstance(params.get("z"), float) else None)
    if isinstance(params.get("centre_um"), float):
        kwargs.setdefault("centre_um", params["centre_um"])
        kwargs.setdefault("width_kms", float(params.get("width_kms", 750.0)))
        if params.get("line"):
            kwargs.setdefault("line", params["line"])
    shown = dict(params)
    shown["cleaned file"] = Path(cleaned_path).name
    shown["original file"] = original_name
    return build_report(product.cube, product.flags, product.layer_map, out=out,
                        original=orig_cube, title=f"layerclip report: {Path(cleaned_path).name}",
                        params=shown, history=product.history, overwrite=overwrite, **kwargs)


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f1f1f1}td.l,th.l{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
.note{color:#555;font-size:.9em}
"""


def _esc(value):
    return html.escape(str(value))


def _fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)


def _table(header, rows, *, left=1):
    head = "".join(f'<th class="l">{_esc(h)}</th>' if i < left else f"<th>{_esc(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f'<td class="l">{_esc(_fmt(v))}</td>' if i < left
                        else f"<td>{_esc(_fmt(v))}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(path, caption):
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)} ({_esc(Path(path).name)})</figcaption></figure>")


def _stats_table(rows):
    header = ["group", "n", "median before", "median after", "MAD before", "MAD after",
              "min before", "min after", "max before", "max after"]
    body = [[r["group"], r["n"], r["median_before"], r["median_after"], r["mad_before"],
             r["mad_after"], r["min_before"], r["min_after"], r["max_before"],
             r["max_after"]] for r in rows]
    return _table(header, body)


def _html(result, *, cleaned, original, title, params, history):
    b = result.benchmarks
    comp = result.comparison
    wave = cleaned.wavelength
    unit = cleaned.bunit or "cube units"
    parts = [f"<h1>{_esc(title or 'layerclip report')}</h1>",
             f'<p class="note">layerclip {_esc(__version__)}; cube {cleaned.shape[0]} planes '
             f"x {cleaned.shape[1]} x {cleaned.shape[2]} spaxels, "
             f"{wave.min():.5g}-{wave.max():.5g} um; flux unit {_esc(unit)}.</p>"]
    parts.append("<h2>Leftover artifacts</h2>")
    rows = []
    for row in comp.rows():
        rows.append([row["label"], row["spikes"],
                     None if row["fraction"] is None else f"{100 * row['fraction']:.3f}%",
                     row["line_flux"]])
    head = ["cube", "leftover spikes", "voxels replaced",
            f"line flux {comp.line_name or ''} [{comp.line_flux_unit}]"]
    parts.append(_table(head, rows))
    sp = comp.spikes[-1]
    rng = ("the whole spectral range" if sp.wave_range is None
           else f"{sp.wave_range[0]:.5g}-{sp.wave_range[1]:.5g} um")
    parts.append(
        f'<p class="note">Counted as the paper does: peaks of noise spikes beyond '
        f"{sp.nsigma:g} x {comp.noise:.3g} {_esc(comp.unit)} in the continuum-subtracted, "
        f"line-masked integrated spectrum of the {comp.n_target} target spaxels; a spike "
        f"spanning several planes counts once. Range: {_esc(rng)}, {sp.n_planes} planes "
        f"searched, {int(comp.line_mask.sum())} line planes masked.</p>")
    for note in comp.notes:
        parts.append(f'<p class="note">{_esc(note)}</p>')
    parts.append("<h2>Replaced voxels per group</h2>")
    parts.append(_table(["group", "spaxels", "replaced voxels", "per plane"],
                        [[r["group"], r["spaxels"], r["replaced"], r["per_plane"]]
                         for r in result.layer_counts]))
    parts.append("<h2>Benchmarks</h2>")
    parts.append(f"<p>Sky benchmark slice {b.sky_slice} ({wave[b.sky_slice]:.5f} um), target "
                 f"benchmark slice {b.target_slice} ({wave[b.target_slice]:.5f} um), chosen "
                 f"{_esc(b.source)}ally where replacements are densest.</p>")
    parts.append(_table(["group", "y", "x", "kind", "slice"],
                        [[r["group"], r["y"], r["x"], r["kind"], r["slice"]]
                         for r in b.rows()]))
    for key in ("fig2_layers", "fig3_sky_slice", "fig3_target_slice", "benchmarks_sky",
                "benchmarks_target"):
        parts.append(_img(result.figures[key], FIGURES[key]))
    parts.append(f"<h2>Slice statistics before and after ({_esc(unit)})</h2>")
    parts.append(f"<p>Sky benchmark slice {b.sky_slice}:</p>")
    parts.append(_stats_table(result.stats["sky"]))
    parts.append(f"<p>Target benchmark slice {b.target_slice}:</p>")
    parts.append(_stats_table(result.stats["target"]))
    parts.append('<p class="note">MAD: median absolute deviation from the median '
                 "(unscaled).</p>")
    parts.append("<h2>Integrated target spectrum</h2>")
    parts.append(_img(result.figures["fig4_integrated"], FIGURES["fig4_integrated"]))
    if original is None:
        parts.append('<p class="note">The original cube was not given, so "before" views show '
                     "the cleaned cube.</p>")
    parts.append("<h2>Parameters</h2>")
    parts.append(_table(["parameter", "value"], sorted(params.items()), left=2))
    if history:
        parts.append("<h2>Provenance (HISTORY)</h2>")
        parts.append(f"<pre>{_esc(chr(10).join(history))}</pre>")
    body = "\n".join(parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title or 'layerclip report')}</title><style>{_CSS}</style>"
            f"</head><body>\n{body}\n</body></html>\n")
