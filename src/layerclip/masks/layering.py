"""Splitting target spaxels into S/N layers: automatic rule, given edges, Voronoi bins.

The automatic rule follows the paper's section 2.1.3: three or four layers
(four when the target's S/N spans a wide range, to protect the brightest
spaxels), each as narrow in S/N as the spaxel counts allow, where every layer
holds at least the number of spaxels the clipping statistic needs to flag a
single outlier (:func:`layerclip.layers.min_clippable_size`: 24 for the
paper's 5-sigma std clip) and at least ``balance`` (0.9) of an equal share.
Narrowness is measured in log S/N (the ratio of a layer's highest to lowest
S/N), so low-S/N layers, where the paper says a wide range hurts most, are not
lumped together; among the allowed splits the one with the smallest sum of
squared log-widths is taken (an exact dynamic programme).
"""

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import EmptyTargetError, LayerclipWarning, OptionError
from ..layers import EXCLUDED, max_single_outlier_sigma, min_clippable_size

__all__ = ["LayerChoice", "choose_edges", "edges_from_list", "assign_layers",
           "voronoi_snr", "layer_counts"]

log = logging.getLogger(__name__)


@dataclass
class LayerChoice:
    """S/N edges of the layers and why they were chosen.

    Attributes
    ----------
    edges : ndarray of float
        ``N + 1`` increasing edges; layer ``i`` holds ``edges[i-1] <= S/N < edges[i]``
        (the last edge is above the target's highest S/N).
    min_size : int
        Spaxels a layer needs so the clip can flag one outlier.
    asked : int
        Layers asked for (after resolving ``"auto"``).
    rule : str
        ``"auto"``, ``"edges"`` or ``"vorbin"``.
    notes : list of str
        Warnings issued, also emitted as :class:`~layerclip.errors.LayerclipWarning`.
    """

    edges: np.ndarray
    min_size: int
    asked: int
    rule: str = "auto"
    notes: list = field(default_factory=list)

    @property
    def n_layers(self):
        return len(self.edges) - 1


def _warn(notes, message):
    notes.append(message)
    warnings.warn(message, LayerclipWarning, stacklevel=3)


def _partition(values, k, min_size, *, max_candidates=1000):
    """Cut sorted ``values`` into ``k`` runs minimising the summed squared log-range.

    Cuts fall only between different values (ties stay in one layer) and every
    run holds ``min_size`` or more values. Dynamic programme over candidate cut
    positions, one (m, m) array step per layer; for large targets the candidates
    are thinned to ``max_candidates`` evenly spaced positions. Returns the start
    index of every run after the first, or None when no such cut exists.
    """
    n = values.size
    logv = np.log(values)
    boundary = np.ones(n + 1, dtype=bool)
    boundary[1:n] = values[1:] != values[:-1]
    cand = np.flatnonzero(boundary)  # always holds 0 and n
    if cand.size > max_candidates:
        pick = np.unique(np.linspace(0, cand.size - 1, max_candidates).round().astype(int))
        cand = cand[pick]
    m = cand.size
    start, end = cand[:, None], cand[None, :]
    count = end - start
    with np.errstate(invalid="ignore"):
        width = logv[np.clip(end - 1, 0, n - 1)] - logv[np.clip(start, 0, n - 1)]
    cost_run = np.where(count >= min_size, width**2, np.inf)
    best = cost_run[0].copy()  # one run from 0 to each candidate end
    choice = []
    for _ in range(1, k):
        total = best[:, None] + cost_run  # previous runs end at a, new run a..b
        arg = np.argmin(total, axis=0)
        best = total[arg, np.arange(m)]
        choice.append(arg)
    if not np.isfinite(best[m - 1]):
        return None
    cuts = []
    j = m - 1
    for arg in reversed(choice):
        j = int(arg[j])
        cuts.append(int(cand[j]))
    return sorted(cuts)


def choose_edges(snr_values, *, n_layers="auto", sigma=5.0, statistic="std", min_size=None,
                 wide_range=30.0, balance=0.9):
    """Automatic S/N edges for the target's layers.

    Parameters
    ----------
    snr_values : ndarray
        S/N of the target spaxels (all positive and finite).
    n_layers : int or "auto", optional
        Layers wanted. ``"auto"`` (default) asks for 4 when the target's S/N spans
        more than ``wide_range`` (ratio of its 95th percentile to its lowest
        value), else 3, as the paper recommends.
    sigma : float, optional
        Clipping threshold the layers must serve (default 5).
    statistic : str, optional
        Scale statistic of the clip (default ``"std"``, the paper's); see
        :func:`layerclip.layers.max_single_outlier_sigma`.
    min_size : int, optional
        Smallest layer; default :func:`~layerclip.layers.min_clippable_size`.
    wide_range : float, optional
        S/N ratio above which ``"auto"`` asks for four layers (default 30).
    balance : float, optional
        Every layer holds at least ``balance`` times an equal share of the target
        (and never fewer than ``min_size``). 1 gives equal counts; lower values let
        layers trade spaxels for narrower S/N ranges. Default 0.9: measured on
        the synthetic cubes (arc, compact, faint; paper-mode clipping), layers
        much smaller than an equal share, such as a narrow top layer of ~25
        spaxels, catch fewer artifacts and flag more noise.

    Returns
    -------
    LayerChoice
    """
    values = np.sort(np.asarray(snr_values, dtype=float).ravel())
    if values.size == 0:
        raise EmptyTargetError("the target mask is empty: nothing to split into layers")
    if not np.all(np.isfinite(values)) or values[0] <= 0:
        raise OptionError("target spaxels must have finite positive S/N to be layered "
                          f"(lowest {values[0]:.3g}); raise the S/N threshold above 0")
    needed = min_clippable_size(sigma, statistic)
    min_size = needed if min_size is None else int(min_size)
    if n_layers == "auto":
        span = np.percentile(values, 95) / values[0]
        asked = 4 if span > wide_range else 3
    else:
        try:
            asked = int(n_layers)
        except (TypeError, ValueError):
            raise OptionError(f"--n-layers {n_layers!r}: expected a whole number or 'auto'") \
                from None
        if asked < 1:
            raise OptionError(f"--n-layers {n_layers!r}: expected at least 1")
    notes = []
    n = values.size
    k = max(1, min(asked, n // max(min_size, 1)))
    cuts = None
    while k > 1:
        cuts = _partition(values, k, max(min_size, int(balance * n / k)))
        if cuts is not None:
            break
        k -= 1  # ties made k runs of min_size impossible
    if k < asked:
        _warn(notes, f"{n} target spaxels allow only {k} layer(s) of at least {min_size} "
                     f"spaxels (asked for {asked}; a {sigma:g}-sigma '{statistic}' clip needs "
                     f"{needed} spaxels per layer to flag a single outlier)")
    if n < needed:
        bound = float(max_single_outlier_sigma(n, statistic))
        _warn(notes, f"the target has only {n} spaxels: in one layer a single outlier can "
                     f"reach at most {bound:.2f} sigma of a '{statistic}' clip, below "
                     f"sigma={sigma:g}, so no lone outlier can be flagged there; use a robust "
                     "statistic, a lower sigma, or merge the target into the sky")
    if not 0 < balance <= 1:
        raise OptionError(f"balance {balance!r}: expected a number in (0, 1]")
    starts = [0, *(cuts or [])] if k > 1 else [0]
    top = values[-1] + max(1.0, abs(values[-1]) * 1e-6)
    edges = np.array([values[s] for s in starts] + [top])
    log.info("automatic layers: %d of %d asked, edges %s, min size %d", len(edges) - 1,
             asked, np.array2string(edges, precision=3), min_size)
    return LayerChoice(edges=edges, min_size=min_size, asked=asked, rule="auto", notes=notes)


def edges_from_list(snr_values, boundaries, *, sigma=5.0, statistic="std"):
    """Layers from S/N boundaries given by hand.

    Parameters
    ----------
    snr_values : ndarray
        S/N of the target spaxels.
    boundaries : sequence of float
        Increasing S/N values separating the layers: ``[10, 40]`` makes three
        layers, S/N < 10, 10 <= S/N < 40 and S/N >= 40.

    Returns
    -------
    LayerChoice
        Warns (with counts) about empty layers and layers too small to clip.
    """
    values = np.asarray(snr_values, dtype=float).ravel()
    if values.size == 0:
        raise EmptyTargetError("the target mask is empty: nothing to split into layers")
    b = np.asarray(boundaries, dtype=float).ravel()
    if not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
        raise OptionError(f"layer edges {list(boundaries)}: expected increasing numbers")
    lo = min(float(values.min()), float(b[0]) if b.size else np.inf)
    top = max(float(values.max()), float(b[-1]) if b.size else -np.inf)
    edges = np.array([lo, *b, top + max(1.0, abs(top) * 1e-6)])
    needed = min_clippable_size(sigma, statistic)
    counts = np.histogram(values, bins=edges)[0]
    notes = []
    for i, c in enumerate(counts, 1):
        if c < needed:
            _warn(notes, f"layer {i} (S/N {edges[i - 1]:.3g}-{edges[i]:.3g}) holds {c} "
                         f"spaxels; a {sigma:g}-sigma '{statistic}' clip needs {needed} to "
                         "flag a single outlier")
    return LayerChoice(edges=edges, min_size=needed, asked=len(edges) - 1, rule="edges",
                       notes=notes)


def assign_layers(snr, target, edges, *, no_data=None):
    """Layer map from a target mask and S/N edges.

    Parameters
    ----------
    snr : ndarray, shape (ny, nx)
    target : ndarray of bool
    edges : ndarray
        As in :class:`LayerChoice`; S/N below the first edge goes to layer 1,
        above the last to the top layer.
    no_data : ndarray of bool, optional
        Spaxels set to -1 (excluded).

    Returns
    -------
    ndarray of int16
        -1 excluded, 0 sky, 1..N layers.
    """
    layer_map = np.zeros(np.shape(snr), dtype=np.int16)
    values = np.asarray(snr, dtype=float)[target]
    layer_map[target] = np.clip(np.searchsorted(edges, values, side="right"), 1,
                                len(edges) - 1)
    if no_data is not None:
        layer_map[no_data] = EXCLUDED
    return layer_map


def voronoi_snr(signal, noise, target, *, target_sn=50.0):
    """Per-spaxel S/N averaged over Voronoi bins (Cappellari & Copin 2003, ``vorbin``).

    Target spaxels are binned to about ``target_sn`` per bin; every spaxel of a
    bin then gets the bin's mean per-spaxel S/N, ``S/N_bin / sqrt(n_bin)``. Layers
    cut from this smoothed map follow whole bins, so their boundaries are not
    frayed by noise in the faint outskirts.

    Parameters
    ----------
    signal, noise : ndarray, shape (ny, nx)
        Summed signal and quadrature noise (see :class:`~layerclip.masks.SNRMap`).
    target : ndarray of bool
    target_sn : float, optional
        S/N per bin (default 50).

    Returns
    -------
    snr_binned : ndarray of float
        NaN outside the target.
    bins : ndarray of int
        Bin number per spaxel, -1 outside the target.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # vorbin's deprecation notice
            from vorbin.voronoi_2d_binning import voronoi_2d_binning
    except ImportError:  # pragma: no cover - optional extra
        raise OptionError("Voronoi layers need the vorbin package "
                          "(pip install 'layerclip[masks]')") from None
    ys, xs = np.nonzero(target)
    if ys.size < 2:
        raise EmptyTargetError("Voronoi binning needs at least 2 target spaxels")
    s = np.asarray(signal, dtype=float)[ys, xs]
    nz = np.asarray(noise, dtype=float)[ys, xs]
    total = s.sum() / np.sqrt((nz**2).sum())
    if total < target_sn:
        raise OptionError(f"vorbin target_sn={target_sn:g}: the whole target reaches only "
                          f"S/N {total:.1f}; lower target_sn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vorbin warns on degenerate geometry it handles
        bin_num = voronoi_2d_binning(xs.astype(float), ys.astype(float), s, nz,
                                     float(target_sn), plot=False, quiet=True,
                                     pixelsize=1.0, seed=1)[0]
    bin_num = np.asarray(bin_num, dtype=int)
    nbin = int(bin_num.max()) + 1
    sig_b = np.bincount(bin_num, weights=s, minlength=nbin)
    var_b = np.bincount(bin_num, weights=nz**2, minlength=nbin)
    n_b = np.bincount(bin_num, minlength=nbin)
    per_spaxel = sig_b / np.sqrt(var_b) / np.sqrt(np.maximum(n_b, 1))
    out = np.full(np.shape(target), np.nan)
    out[ys, xs] = per_spaxel[bin_num]
    bins = np.full(np.shape(target), -1, dtype=int)
    bins[ys, xs] = bin_num
    log.info("vorbin: %d bins at target S/N %g", nbin, target_sn)
    return out, bins


def layer_counts(layer_map, snr=None):
    """Spaxels per layer and their S/N range.

    Returns
    -------
    list of dict
        ``layer``, ``count``, ``snr_min``, ``snr_max`` for layers 1..N (and the sky
        as layer 0), in order.
    """
    out = []
    snr = None if snr is None else np.asarray(snr, dtype=float)
    for g in range(0, int(max(layer_map.max(), 0)) + 1):
        sel = layer_map == g
        row = {"layer": g, "count": int(sel.sum())}
        if snr is not None and g > 0:
            v = snr[sel]
            v = v[np.isfinite(v)]
            row["snr_min"] = float(v.min()) if v.size else float("nan")
            row["snr_max"] = float(v.max()) if v.size else float("nan")
        out.append(row)
    return out
