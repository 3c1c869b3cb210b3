"""Recorded fine-tuning of a layer map: the hand edits of the paper's section 2.1.3.

Each operation takes a layer map (``-1`` excluded, ``0`` sky, ``1..N`` layers)
and returns a new one plus an :class:`EditRecord` listing every spaxel it
changed, so an edit can be logged, shown and replayed exactly.
"""

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import OptionError
from ..layers import EXCLUDED, SKY

__all__ = ["EditRecord", "move_spaxels", "field_edge", "lift_edges", "neighbour_stack",
           "find_artifact_inflated", "demote_spaxels"]

log = logging.getLogger(__name__)


@dataclass
class EditRecord:
    """What one edit changed.

    Attributes
    ----------
    op : str
        ``"move"``, ``"lift_edges"`` or ``"demote_artifacts"``.
    params : dict
        The operation's settings.
    ys, xs : ndarray of int
        Spaxels changed.
    before, after : ndarray of int
        Their layers before and after.
    """

    op: str
    params: dict = field(default_factory=dict)
    ys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    xs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    before: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    after: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    @property
    def n_changed(self):
        return int(self.ys.size)

    def describe(self, max_list=8):
        """One line: the operation, its settings and the spaxels it changed."""
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        moves = ", ".join(f"({x},{y}) {b}->{a}" for y, x, b, a in
                          zip(self.ys[:max_list], self.xs[:max_list], self.before[:max_list],
                              self.after[:max_list], strict=True))
        more = f" +{self.n_changed - max_list} more" if self.n_changed > max_list else ""
        return f"edit {self.op} {params}: {self.n_changed} spaxel(s) {moves}{more}".strip()


def _record(op, params, old, new):
    ys, xs = np.nonzero(old != new)
    return EditRecord(op=op, params=params, ys=ys, xs=xs, before=old[ys, xs].astype(int),
                      after=new[ys, xs].astype(int))


def move_spaxels(layer_map, where, to_layer, *, label="move", no_data=None):
    """Put the spaxels selected by ``where`` into layer ``to_layer``.

    Parameters
    ----------
    layer_map : ndarray of int
    where : ndarray of bool
        Spaxels to move (from a spaxel list or a region).
    to_layer : int
        ``-1`` (exclude), ``0`` (sky) or a target layer ``1..N``; ``"top"`` for the
        current highest layer.
    no_data : ndarray of bool, optional
        Spaxels without data stay excluded whatever is asked.

    Returns
    -------
    (layer_map, EditRecord)
    """
    old = np.asarray(layer_map)
    top = int(max(old.max(), 1))
    if to_layer == "top":
        to_layer = top
    try:
        to_layer = int(to_layer)
    except (TypeError, ValueError):
        raise OptionError(f"{label}: to_layer {to_layer!r}: expected -1, 0, 1..N or 'top'") \
            from None
    if to_layer < EXCLUDED or to_layer > top + 1:
        raise OptionError(f"{label}: to_layer {to_layer}: expected -1 (exclude), 0 (sky) "
                          f"or a layer 1..{top} (or {top + 1} to open a new top layer)")
    new = old.copy()
    sel = np.asarray(where, dtype=bool)
    if no_data is not None:
        sel = sel & ~no_data
    new[sel] = to_layer
    rec = _record("move", {"to_layer": to_layer, "label": label}, old, new)
    log.info("%s", rec.describe())
    return new, rec


def field_edge(no_data, *, width=2.0, wmap=None, wmap_fraction=0.5):
    """Spaxels near the edge of the field of view.

    A spaxel is on the edge when it is within ``width`` spaxels of a spaxel
    without data (the NaN boundary of the mosaic; the array border does not
    count), or, with ``wmap``, when its weight is below ``wmap_fraction`` of the
    median weight of the field (fewer dithers cover it).

    Parameters
    ----------
    no_data : ndarray of bool, shape (ny, nx)
        True where a spaxel has no usable data at all.
    width : float, optional
        Distance to the NaN boundary, spaxels (default 2).
    wmap : ndarray, shape (ny, nx), optional
        Collapsed weight map (JWST ``WMAP``).
    wmap_fraction : float, optional

    Returns
    -------
    ndarray of bool
    """
    no_data = np.asarray(no_data, dtype=bool)
    inside = ~no_data
    edge = np.zeros(no_data.shape, dtype=bool)
    if no_data.any():
        dist = ndimage.distance_transform_edt(inside)
        edge |= inside & (dist <= width)
    if wmap is not None:
        w = np.asarray(wmap, dtype=float)
        good = inside & np.isfinite(w)
        if good.any():
            ref = np.median(w[good])
            with np.errstate(invalid="ignore"):
                edge |= good & (w < wmap_fraction * ref)
    return edge


def lift_edges(layer_map, edge, *, include_sky=False, max_distance=3.0):
    """Lift field-edge spaxels to the layer of their nearest interior neighbour.

    Spaxels at the edge of the field have low S/N because fewer dithers cover
    them, not because the target is fainter there (paper section 2.1.3). Each
    edge spaxel takes the layer of the nearest spaxel that is not on the edge,
    when that is higher; nothing is ever lowered.

    Parameters
    ----------
    layer_map : ndarray of int
    edge : ndarray of bool
        From :func:`field_edge`.
    include_sky : bool, optional
        Also lift edge spaxels now in the sky (layer 0) next to the target, so a
        target crossing the field edge keeps its edge spaxels (default False).
    max_distance : float, optional
        Farthest interior neighbour used, spaxels (default 3).

    Returns
    -------
    (layer_map, EditRecord)
    """
    old = np.asarray(layer_map)
    edge = np.asarray(edge, dtype=bool) & (old != EXCLUDED)
    interior = (old != EXCLUDED) & ~edge
    new = old.copy()
    if edge.any() and interior.any():
        dist, (iy, ix) = ndimage.distance_transform_edt(~interior, return_indices=True)
        donor = old[iy, ix]
        eligible = edge & (dist <= max_distance) & (donor > old)
        eligible &= (old >= 1) if not include_sky else (old >= SKY)
        eligible &= donor >= 1
        new[eligible] = donor[eligible]
    rec = _record("lift_edges", {"include_sky": include_sky, "max_distance": max_distance},
                  old, new)
    log.info("%s", rec.describe())
    return new, rec


def neighbour_stack(image, *, fill=np.nan):
    """The 8 neighbours of every pixel as a (8, ny, nx) stack (``fill`` off the image)."""
    image = np.asarray(image, dtype=float)
    pad = np.pad(image, 1, constant_values=fill)
    ny, nx = image.shape
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return np.stack([pad[1 + dy:1 + dy + ny, 1 + dx:1 + dx + nx] for dy, dx in shifts])


def find_artifact_inflated(snr, robust, target, *, factor=2.0, robust_factor=1.5,
                           min_excess=3.0, deflated=False, no_data=None):
    """Spaxels whose S/N artifacts in the summed planes have inflated (or deflated).

    A target spaxel is suspect when its S/N is more than ``factor`` times the
    median of its target neighbours (and at least ``min_excess`` above it), while
    its robust S/N (:func:`layerclip.snr.robust_snr`, which one to three artifact
    planes cannot move) is not more than ``robust_factor`` times its neighbours'
    and at least ``min_excess`` below its own summed S/N: the map says bright,
    the spectrum's line says ordinary. Real structure (a knot, a dust lane) has a
    robust S/N equal to its summed S/N and is never suspect.

    With ``deflated``, spaxels outside the target but with at least six of their
    eight neighbours in it, whose S/N is below ``1 / factor`` of those
    neighbours' (and ``min_excess`` below) while their robust S/N is
    ``min_excess`` above their summed S/N and at least ``1 / (factor *
    robust_factor)`` of the neighbours', are suspect too: a negative residual
    punched a hole in the target.

    Parameters
    ----------
    snr, robust : ndarray, shape (ny, nx)
        Summed and robust S/N maps of the same planes.
    target : ndarray of bool
    factor, robust_factor, min_excess : float, optional
    deflated : bool, optional
    no_data : ndarray of bool, optional
        Spaxels never suspect.

    Returns
    -------
    suspect : ndarray of bool
    neighbour_snr : ndarray of float
        Median S/N of each spaxel's target neighbours (NaN without any).
    """
    target = np.asarray(target, dtype=bool)
    nb_snr = neighbour_stack(np.where(target, snr, np.nan))
    nb_rob = neighbour_stack(np.where(target, robust, np.nan))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
        med_snr = np.nanmedian(nb_snr, axis=0)
        med_rob = np.nanmedian(nb_rob, axis=0)
        suspect = (target & (snr > factor * med_snr) & (snr - med_snr >= min_excess)
                   & (robust <= robust_factor * np.maximum(med_rob, 0))
                   & (snr - robust >= min_excess))
        if deflated:
            n_nb = np.isfinite(nb_snr).sum(axis=0)
            low = (~target & (n_nb >= 6) & (med_snr > 0) & (snr < med_snr / factor)
                   & (med_snr - snr >= min_excess) & (robust - snr >= min_excess)
                   & (robust >= med_rob / (factor * robust_factor)))
            if no_data is not None:
                low &= ~np.asarray(no_data, dtype=bool)
            suspect |= low
    return suspect & np.isfinite(med_snr), med_snr


def demote_spaxels(layer_map, suspect, neighbour_snr, edges, *, params=None):
    """Move suspect spaxels down to the layer their neighbours' S/N belongs to.

    Parameters
    ----------
    layer_map : ndarray of int
    suspect : ndarray of bool
        From :func:`find_artifact_inflated`.
    neighbour_snr : ndarray of float
        Median S/N of each spaxel's target neighbours.
    edges : ndarray
        S/N edges of the layers.

    Returns
    -------
    (layer_map, EditRecord)
    """
    old = np.asarray(layer_map)
    new = old.copy()
    sel = np.asarray(suspect, dtype=bool) & (old >= 1) & np.isfinite(neighbour_snr)
    target_layer = np.clip(np.searchsorted(edges, np.nan_to_num(neighbour_snr), side="right"),
                           1, len(edges) - 1)
    lower = sel & (target_layer < old)
    new[lower] = target_layer[lower]
    rec = _record("demote_artifacts", dict(params or {}), old, new)
    log.info("%s", rec.describe())
    return new, rec
