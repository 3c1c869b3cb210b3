"""From an S/N map to a final layer map: the whole of the paper's section 2.1 in one call.

:class:`MaskSpec` holds every choice (S/N map, threshold, islands, components,
regions, spaxel lists, segmentation, layer rule, recorded edits); it is what a
recipe file or the command line fills in. :func:`build_mask` applies it to an
:class:`~layerclip.masks.snrmaps.SNRMap` and returns a :class:`MaskResult` with
every intermediate product, so the figure can show the mask before and after
the edits and the provenance can list each edit.

Order of the steps (fixed, so a spec always gives the same map):

1. target = S/N >= threshold (spaxels without data never);
2. drop islands smaller than ``min_island``;
3. keep only spaxels inside ``keep_regions`` (if any);
4. segmentation (photutils) keeping the segments at ``keep_at`` (or the largest),
   or, without segmentation, keep the components touching ``keep_at``;
5. remove ``remove_regions`` / ``remove_spaxels``; add ``add_regions`` / ``add_spaxels``;
6. layers: automatic rule, hand-given edges, or Voronoi-smoothed S/N;
7. ``ignore_regions`` / ``ignore_spaxels`` become -1 (left out of every group);
8. edits, in the order given: ``move``, ``lift_edges``, ``demote_artifacts``.
"""

import logging
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import EmptyTargetError, LayerclipWarning, OptionError
from ..layers import EXCLUDED, STATISTICS, drop_small_islands, validate_layer_map
from .edits import demote_spaxels, field_edge, find_artifact_inflated, lift_edges, move_spaxels
from .layering import (
    LayerChoice,
    assign_layers,
    choose_edges,
    edges_from_list,
    layer_counts,
    voronoi_snr,
)
from .regionfiles import regions_mask
from .select import keep_touching, segment_target, spaxel_mask, threshold_mask
from .snrmaps import SNRMap

__all__ = ["MaskSpec", "MaskResult", "build_mask", "EDIT_OPS"]

log = logging.getLogger(__name__)

#: Edit operations and the keys each accepts (besides ``op``).
EDIT_OPS = {
    "move": {"spaxels", "region", "to_layer"},
    "lift_edges": {"width", "wmap_fraction", "use_wmap", "include_sky", "max_distance"},
    "demote_artifacts": {"factor", "robust_factor", "min_excess"},
}


@dataclass
class MaskSpec:
    """Every setting of the target mask and its layers.

    S/N map
        ``lines`` (names or rest Angstrom, with ``z``), ``obs_wave`` (microns) or
        ``continuum=True``; ``width_kms`` (750); ``combine`` ("sum" or "max") for
        several lines; ``continuum_width_kms`` (1500) of the masked line windows.
    Target
        ``threshold`` (3), ``min_island`` (4), ``keep_at`` (list of (x, y)),
        ``segmentation`` (False; with ``reject_at``, a list of (x, y) on
        neighbours whose segments are removed), ``segmentation_npixels`` (5),
        ``segmentation_contrast`` (0.001), ``keep_regions``, ``remove_regions``,
        ``add_regions``, ``ignore_regions`` (region files), ``add_spaxels``,
        ``remove_spaxels``, ``ignore_spaxels`` (lists of (x, y)).
    Layers
        ``rule`` ("auto", "edges" or "vorbin"), ``n_layers`` ("auto" or int),
        ``edges`` (S/N boundaries between layers, for rule "edges"),
        ``vorbin_target_sn`` (50), ``sigma`` (5) and ``statistic`` ("std") of the
        clip the layers serve, ``wide_range`` (30), ``balance`` (0.9; see
        :func:`~layerclip.masks.choose_edges`). ``rank`` ("robust", the default,
        or "snr" for the map's S/N as it is):
        with "robust", spaxels whose S/N artifacts inflated or deflated
        (:func:`~layerclip.masks.find_artifact_inflated`) are ranked by their
        neighbours' S/N before the edges are chosen (holes go back into the
        target), so the layers are sized after the demotion (the automatic
        pipeline's choice).
    Edits
        ``edits``: list of dicts with ``op`` in :data:`EDIT_OPS`.

    Spaxel positions are zero-based ``(x, y)``.
    """

    lines: list | None = None
    z: float | None = None
    obs_wave: list | None = None
    continuum: bool = False
    width_kms: float = 750.0
    combine: Literal["sum", "max"] = "sum"
    continuum_width_kms: float = 1500.0
    threshold: float = 3.0
    min_island: int = 4
    keep_at: list | None = None
    reject_at: list | None = None
    segmentation: bool = False
    segmentation_npixels: int = 5
    segmentation_contrast: float = 0.001
    keep_regions: list = field(default_factory=list)
    remove_regions: list = field(default_factory=list)
    add_regions: list = field(default_factory=list)
    ignore_regions: list = field(default_factory=list)
    add_spaxels: list = field(default_factory=list)
    remove_spaxels: list = field(default_factory=list)
    ignore_spaxels: list = field(default_factory=list)
    rule: Literal["auto", "edges", "vorbin"] = "auto"
    n_layers: int | str = "auto"
    edges: list | None = None
    vorbin_target_sn: float = 50.0
    rank: Literal["snr", "robust"] = "robust"
    sigma: float = 5.0
    statistic: str = "std"
    wide_range: float = 30.0
    balance: float = 0.9
    edits: list = field(default_factory=list)

    def check(self):
        """Raise :class:`~layerclip.errors.OptionError` on inconsistent settings."""
        if self.rule not in ("auto", "edges", "vorbin"):
            raise OptionError(f"layers rule {self.rule!r}: expected 'auto', 'edges' or 'vorbin'")
        if self.rule == "edges" and not self.edges:
            raise OptionError("layers rule 'edges' needs the S/N edges (e.g. edges = [10, 40])")
        if self.rank not in ("snr", "robust"):
            raise OptionError(f"rank {self.rank!r}: expected 'snr' or 'robust'")
        if self.statistic not in STATISTICS:
            raise OptionError(f"statistic {self.statistic!r}: expected one of "
                              f"{', '.join(STATISTICS)}")
        if not self.continuum and not self.lines and self.obs_wave is None:
            raise OptionError("give a line (with z), an observed wavelength or continuum = "
                              "true for the S/N map")
        if self.lines and self.z is None:
            raise OptionError(f"line {self.lines[0]!r} needs a redshift z")
        for i, edit in enumerate(self.edits, 1):
            op = edit.get("op")
            if op not in EDIT_OPS:
                raise OptionError(f"edit {i}: op {op!r}: expected one of {', '.join(EDIT_OPS)}")
            unknown = set(edit) - EDIT_OPS[op] - {"op"}
            if unknown:
                raise OptionError(f"edit {i} ({op}): unknown key(s) {', '.join(sorted(unknown))}"
                                  f"; expected {', '.join(sorted(EDIT_OPS[op]))}")
            if op == "move":
                if ("spaxels" in edit) == ("region" in edit):
                    raise OptionError(f"edit {i} (move): give either spaxels or region")
                if "to_layer" not in edit:
                    raise OptionError(f"edit {i} (move): to_layer is missing")
        return self


@dataclass
class MaskResult:
    """A layer map and every step that made it.

    Attributes
    ----------
    layer_map : ndarray of int16
        Final map: -1 excluded, 0 sky, 1..N layers.
    snrmap : SNRMap
    no_data : ndarray of bool
    initial : ndarray of bool
        Spaxels above the threshold (the paper's Figure 1a mask).
    target : ndarray of bool
        Target after islands, components, regions and lists (Figure 1b).
    layers_before_edits : ndarray of int16
    choice : LayerChoice
    records : list of EditRecord
    segments : ndarray or None
        Segmentation labels, when used.
    ranking_snr : ndarray
        The S/N map the layers were cut from (Voronoi-smoothed for rule "vorbin").
    notes : list of str
        Warnings issued along the way.
    """

    layer_map: np.ndarray
    snrmap: SNRMap
    no_data: np.ndarray
    initial: np.ndarray
    target: np.ndarray
    layers_before_edits: np.ndarray
    choice: LayerChoice
    records: list = field(default_factory=list)
    segments: np.ndarray | None = None
    ranking_snr: np.ndarray | None = None
    spec: MaskSpec | None = None
    notes: list = field(default_factory=list)
    ranked_by_neighbours: np.ndarray | None = None

    @property
    def edges(self):
        return self.choice.edges

    @property
    def snr(self):
        return self.snrmap.snr

    def counts(self):
        """Spaxels and S/N range per layer (see :func:`~layerclip.masks.layer_counts`).

        The S/N is the one the layers were cut on (:attr:`ranking_snr`): the map's,
        except for spaxels ranked by their neighbours and with rule "vorbin".
        """
        snr = self.snrmap.snr if self.ranking_snr is None else self.ranking_snr
        return layer_counts(self.layer_map, snr)

    def history(self):
        """Provenance lines: S/N map, selection, layers, each edit."""
        spec = self.spec or MaskSpec(continuum=True)
        lines = [f"layerclip mask: {self.snrmap.describe()}",
                 f"layerclip mask: threshold={spec.threshold:g} min_island={spec.min_island} "
                 f"initial={int(self.initial.sum())} target={int(self.target.sum())}",
                 f"layerclip mask: rule={self.choice.rule} layers={self.choice.n_layers} "
                 f"min_size={self.choice.min_size} sigma={spec.sigma:g} "
                 f"statistic={spec.statistic}"]
        if self.ranked_by_neighbours is not None and self.ranked_by_neighbours.any():
            ys, xs = np.nonzero(self.ranked_by_neighbours)
            where = ", ".join(f"({x},{y})" for y, x in zip(ys[:8], xs[:8], strict=True))
            more = f" +{ys.size - 8} more" if ys.size > 8 else ""
            lines.append(f"layerclip mask: rank=robust: {ys.size} artifact-inflated spaxel(s) "
                         f"ranked by their neighbours' S/N: {where}{more}")
        lines += [rec.describe() for rec in self.records]
        counts = " ".join(f"{'sky' if r['layer'] == 0 else 'L' + str(r['layer'])}={r['count']}"
                          for r in self.counts())
        lines.append(f"layerclip mask counts: {counts}")
        return lines


def _region_union(paths, shape, wcs, option):
    mask = np.zeros(shape, dtype=bool)
    for path in paths:
        mask |= regions_mask(path, shape, wcs=wcs, option=option)
    return mask


def build_mask(snrmap, spec, *, no_data=None, celestial_wcs=None, wmap=None):
    """Apply a :class:`MaskSpec` to an S/N map.

    Parameters
    ----------
    snrmap : SNRMap
    spec : MaskSpec
    no_data : ndarray of bool, optional
        Spaxels without any usable voxel (default: where the S/N is NaN).
    celestial_wcs : `~astropy.wcs.WCS`, optional
        For sky-coordinate region files.
    wmap : ndarray, shape (ny, nx), optional
        Collapsed weight map, for ``lift_edges`` with ``use_wmap``.

    Returns
    -------
    MaskResult
    """
    spec.check()
    snr = np.asarray(snrmap.snr, dtype=float)
    shape = snr.shape
    if no_data is None:
        no_data = ~np.isfinite(snr)
    no_data = np.asarray(no_data, dtype=bool) | ~np.isfinite(snr)
    notes = []

    initial = threshold_mask(snr, spec.threshold, no_data=no_data)
    if not initial.any() and not (spec.add_regions or spec.add_spaxels):
        finite = snr[np.isfinite(snr) & ~no_data]
        peak = f"{finite.max():.2f}" if finite.size else "n/a"
        raise EmptyTargetError(
            f"no spaxel has S/N >= {spec.threshold:g} (peak S/N {peak}); "
            "check the line, redshift and window, or lower --snr-threshold")
    target = drop_small_islands(initial, int(spec.min_island))
    if spec.keep_regions:
        target &= _region_union(spec.keep_regions, shape, celestial_wcs, "keep_regions")
    segments = None
    if spec.segmentation:
        if target.any():
            seg_map = snr
            if snrmap.robust is not None:
                # Artifact spikes make false local peaks that deblending would split
                # the target at: segment a map with them ranked by their neighbours.
                spikes, nb = find_artifact_inflated(snr, snrmap.robust, target)
                seg_map = np.where(spikes, nb, snr)
            target, segments = segment_target(seg_map, target, positions=spec.keep_at,
                                              reject=spec.reject_at,
                                              n_pixels=spec.segmentation_npixels,
                                              contrast=spec.segmentation_contrast)
    elif spec.keep_at:
        target = keep_touching(target, spec.keep_at)
    if spec.reject_at and not spec.segmentation:
        raise OptionError("reject_at needs segmentation = true (the neighbour's segment is "
                          "what gets removed); without it use remove_regions")
    if spec.remove_regions:
        target &= ~_region_union(spec.remove_regions, shape, celestial_wcs, "remove_regions")
    if spec.remove_spaxels:
        target &= ~spaxel_mask(spec.remove_spaxels, shape, option="remove_spaxels")
    if spec.add_regions:
        target |= _region_union(spec.add_regions, shape, celestial_wcs, "add_regions")
    if spec.add_spaxels:
        target |= spaxel_mask(spec.add_spaxels, shape, option="add_spaxels")
    target &= ~no_data
    if not target.any():
        finite = snr[np.isfinite(snr)]
        peak = f"{finite.max():.2f}" if finite.size else "n/a"
        raise EmptyTargetError(
            f"no target spaxel left after the selection steps ({int(initial.sum())} spaxels "
            f"had S/N >= {spec.threshold:g}, peak S/N {peak}); check min_island, keep_at, "
            "segmentation and the regions")

    ranking = snr
    ranked = np.zeros(shape, dtype=bool)
    if spec.rank == "robust" and snrmap.robust is not None:
        ranked, nb = find_artifact_inflated(snr, snrmap.robust, target, deflated=True,
                                            no_data=no_data)
        ranking = np.where(ranked, nb, snr)
        # A hole a negative residual punched in the target is target again.
        target |= ranked & (ranking >= spec.threshold)
        if ranked.any():
            log.info("robust ranking: %d artifact-inflated spaxel(s) ranked by their "
                     "neighbours' S/N", int(ranked.sum()))
    if spec.rule == "vorbin":
        signal = np.where(ranked, ranking * snrmap.noise, snrmap.signal)
        ranking, _ = voronoi_snr(signal, snrmap.noise, target,
                                 target_sn=spec.vorbin_target_sn)
    values = ranking[target]
    positive = values[np.isfinite(values) & (values > 0)]
    if spec.rule == "edges":
        choice = edges_from_list(values[np.isfinite(values)], spec.edges, sigma=spec.sigma,
                                 statistic=spec.statistic)
    else:
        if positive.size == 0:
            raise EmptyTargetError("no target spaxel has a positive S/N to rank layers by")
        choice = choose_edges(positive, n_layers=spec.n_layers, sigma=spec.sigma,
                              statistic=spec.statistic, wide_range=spec.wide_range,
                              balance=spec.balance)
        choice.rule = spec.rule
    notes += choice.notes
    layer_map = assign_layers(np.nan_to_num(ranking, nan=-np.inf), target, choice.edges,
                              no_data=no_data)
    ignore = np.zeros(shape, dtype=bool)
    if spec.ignore_regions:
        ignore |= _region_union(spec.ignore_regions, shape, celestial_wcs, "ignore_regions")
    if spec.ignore_spaxels:
        ignore |= spaxel_mask(spec.ignore_spaxels, shape, option="ignore_spaxels")
    layer_map[ignore] = EXCLUDED
    before = layer_map.copy()

    records = []
    for i, edit in enumerate(spec.edits, 1):
        op = edit["op"]
        if op == "move":
            if "spaxels" in edit:
                where = spaxel_mask(edit["spaxels"], shape, option=f"edit {i} (move) spaxels")
            else:
                where = regions_mask(edit["region"], shape, wcs=celestial_wcs,
                                     option=f"edit {i} (move) region")
            layer_map, rec = move_spaxels(layer_map, where, edit["to_layer"],
                                          label=f"edit {i}", no_data=no_data)
        elif op == "lift_edges":
            use_wmap = edit.get("use_wmap", True)
            edge = field_edge(no_data, width=float(edit.get("width", 2.0)),
                              wmap=wmap if use_wmap else None,
                              wmap_fraction=float(edit.get("wmap_fraction", 0.5)))
            layer_map, rec = lift_edges(layer_map, edge,
                                        include_sky=bool(edit.get("include_sky", False)),
                                        max_distance=float(edit.get("max_distance", 3.0)))
            rec.params.update(width=float(edit.get("width", 2.0)),
                              wmap=bool(use_wmap and wmap is not None))
        else:  # demote_artifacts
            if snrmap.robust is None:
                raise OptionError(f"edit {i} (demote_artifacts) needs a line S/N map, "
                                  "not a continuum one")
            params = {k: float(edit.get(k, d)) for k, d in
                      (("factor", 2.0), ("robust_factor", 1.5), ("min_excess", 3.0))}
            suspect, nb = find_artifact_inflated(snr, snrmap.robust, layer_map >= 1, **params)
            layer_map, rec = demote_spaxels(layer_map, suspect, nb, choice.edges, params=params)
        records.append(rec)
    layer_map = validate_layer_map(layer_map, shape, source="mask")
    if records:
        sizes = np.bincount(np.clip(layer_map.ravel(), 0, None).astype(int))
        for g in range(1, sizes.size):
            if 0 < sizes[g] < choice.min_size <= int((before == g).sum()):
                msg = (f"after the edits layer {g} holds {sizes[g]} spaxels (it had "
                       f"{int((before == g).sum())}); a {spec.sigma:g}-sigma "
                       f"'{spec.statistic}' clip needs {choice.min_size} to flag one outlier")
                notes.append(msg)
                warnings.warn(msg, LayerclipWarning, stacklevel=2)
    log.info("layer map: %s", ", ".join(f"{r['layer']}:{r['count']}"
                                        for r in layer_counts(layer_map)))
    return MaskResult(layer_map=layer_map, snrmap=snrmap, no_data=no_data, initial=initial,
                      target=target, layers_before_edits=before, choice=choice,
                      records=records, segments=segments, ranking_snr=ranking, spec=spec,
                      notes=notes, ranked_by_neighbours=ranked)
