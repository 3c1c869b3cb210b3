"""The mask figure, after the paper's Figure 1: S/N map, target before/after, layers.

Draws a :class:`~layerclip.masks.MaskResult`. matplotlib is imported inside each
function; each takes ``ax=None`` (or ``fig=None``), draws on a new pyplot figure
when none is given (so a notebook shows it inline), and returns the figure.
Axes are zero-based spaxel indices ``(x, y)``, the convention of recipes and
spaxel lists.
"""

import numpy as np

__all__ = ["plot_mask", "plot_snr_map", "plot_target_edits", "plot_layer_map",
           "plot_layer_histogram", "LAYER_COLOURS"]

#: Sky, then layers 1..N from faint to bright.
LAYER_COLOURS = ("#d9d9d9", "#fde725", "#5ec962", "#21918c", "#3b528b", "#440154",
                 "#e31a1c", "#ff7f00")


def _ax(ax, size=(5.0, 4.4)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
    return ax.figure, ax


def _spaxel_axes(ax, shape):
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(-0.5, shape[0] - 0.5)
    ax.set_xlabel("x (spaxel)")
    ax.set_ylabel("y (spaxel)")


def plot_snr_map(result, *, ax=None, threshold=None):
    """S/N map (symmetric log stretch) with the threshold contour (Figure 1a)."""
    import matplotlib as mpl

    fig, ax = _ax(ax)
    snr = np.asarray(result.snr, dtype=float)
    finite = snr[np.isfinite(snr)]
    vmax = float(np.percentile(finite, 99.7)) if finite.size else 1.0
    vmax = max(vmax, 10.0)
    cmap = mpl.colormaps["magma"].with_extremes(bad="white")
    norm = mpl.colors.SymLogNorm(linthresh=3.0, vmin=-3.0, vmax=vmax, base=10)
    im = ax.imshow(snr, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="S/N", shrink=0.85)
    thr = result.spec.threshold if threshold is None and result.spec else threshold
    if thr is not None and np.isfinite(snr).any():
        ax.contour(np.nan_to_num(snr, nan=-np.inf), levels=[thr], colors="cyan",
                   linewidths=0.8)
    _spaxel_axes(ax, snr.shape)
    sm = result.snrmap
    what = ("continuum" if sm.kind == "continuum"
            else " + ".join(name for name, _ in sm.windows))
    ax.set_title(f"(a) S/N of {what} ({sm.planes.size} planes)", fontsize=9)
    return fig


def plot_target_edits(result, *, ax=None):
    """Target mask before and after selection edits (Figure 1b).

    Grey: no data; light: sky; blue: kept target; red: above threshold but removed
    (islands, neighbours, regions); green: added by regions or lists.
    """
    import matplotlib as mpl
    from matplotlib.patches import Patch

    fig, ax = _ax(ax)
    code = np.zeros(result.snr.shape, dtype=int)  # 0 sky
    code[result.initial & result.target] = 1
    code[result.initial & ~result.target] = 2
    code[~result.initial & result.target] = 3
    code[result.no_data] = 4
    colours = ["#f2f2f2", "#2c7fb8", "#e34a33", "#31a354", "#9e9e9e"]
    cmap = mpl.colors.ListedColormap(colours)
    ax.imshow(code, origin="lower", cmap=cmap, vmin=-0.5, vmax=4.5, interpolation="nearest")
    n = [int((code == i).sum()) for i in range(4)]
    handles = [Patch(color=colours[1], label=f"target ({n[1] + n[3]})"),
               Patch(color=colours[2], label=f"removed ({n[2]})"),
               Patch(color=colours[3], label=f"added ({n[3]})"),
               Patch(color=colours[0], label="sky")]
    ax.legend(handles=handles, loc="upper left", fontsize=7, framealpha=0.85)
    _spaxel_axes(ax, code.shape)
    ax.set_title(f"(b) S/N >= {result.spec.threshold:g}: {int(result.initial.sum())} "
                 f"spaxels; target {int(result.target.sum())}", fontsize=9)
    return fig


def plot_layer_map(result, *, ax=None):
    """Final layers with S/N ranges and counts; edited spaxels marked (Figure 1c)."""
    import matplotlib as mpl
    from matplotlib.patches import Patch

    fig, ax = _ax(ax)
    lm = np.asarray(result.layer_map)
    n = int(max(lm.max(), 0))
    colours = list(LAYER_COLOURS[: n + 1])
    while len(colours) < n + 1:
        colours.append(mpl.colormaps["viridis_r"](len(colours) / (n + 1)))
    cmap = mpl.colors.ListedColormap(colours).with_extremes(bad="#9e9e9e")
    image = np.ma.masked_less(lm.astype(float), 0)
    ax.imshow(image, origin="lower", cmap=cmap, vmin=-0.5, vmax=n + 0.5,
              interpolation="nearest")
    handles = []
    for row in result.counts():
        g = row["layer"]
        if g == 0:
            label = f"sky: {row['count']}"
        else:
            label = (f"L{g}: S/N {row.get('snr_min', np.nan):.3g}-"
                     f"{row.get('snr_max', np.nan):.3g}, {row['count']} spx")
        handles.append(Patch(color=colours[g], label=label))
    ranked = result.ranked_by_neighbours
    if ranked is not None and ranked.any():
        ys, xs = np.nonzero(ranked)
        ax.scatter(xs, ys, marker="x", s=16, color="red", linewidths=0.8)
        handles.append(mpl.lines.Line2D([], [], ls="", marker="x", color="red",
                                        label=f"ranked by neighbours: {ys.size}"))
    markers = {"move": "s", "lift_edges": "^", "demote_artifacts": "v"}
    for rec in result.records:
        if rec.n_changed:
            ax.scatter(rec.xs, rec.ys, marker=markers.get(rec.op, "o"), s=14,
                       facecolors="none", edgecolors="red", linewidths=0.8)
            handles.append(mpl.lines.Line2D([], [], ls="", marker=markers.get(rec.op, "o"),
                                            mfc="none", mec="red",
                                            label=f"{rec.op}: {rec.n_changed}"))
    ax.legend(handles=handles, loc="upper left", fontsize=7, framealpha=0.85)
    _spaxel_axes(ax, lm.shape)
    ax.set_title(f"(c) {n} layer(s), rule {result.choice.rule}; min size "
                 f"{result.choice.min_size}", fontsize=9)
    return fig


def plot_layer_histogram(result, *, ax=None):
    """S/N distribution of the target with the layer edges and counts."""
    fig, ax = _ax(ax)
    lm = np.asarray(result.layer_map)
    snr = np.asarray(result.snr if result.ranking_snr is None else result.ranking_snr,
                     dtype=float)
    n = int(max(lm.max(), 0))
    values = snr[(lm >= 1) & np.isfinite(snr) & (snr > 0)]
    if values.size:
        bins = np.geomspace(max(values.min() * 0.9, 1e-3), values.max() * 1.1, 40)
        data = [snr[(lm == g) & np.isfinite(snr) & (snr > 0)] for g in range(1, n + 1)]
        ax.hist(data, bins=bins, stacked=True, color=list(LAYER_COLOURS[1:n + 1]),
                edgecolor="0.3", linewidth=0.3,
                label=[f"L{g}: {d.size}" for g, d in enumerate(data, 1)])
        ax.set_xscale("log")
        for e in result.edges[1:-1]:
            ax.axvline(e, color="k", lw=0.8, ls="--")
        ax.legend(fontsize=7)
    ax.axvline(result.spec.threshold if result.spec else 3.0, color="cyan", lw=0.8)
    ax.set_xlabel("S/N of target spaxels")
    ax.set_ylabel("spaxels")
    ax.set_title(f"(d) layer edges; a layer needs >= {result.choice.min_size} spaxels",
                 fontsize=9)
    return fig


def plot_mask(result, *, fig=None, title=None):
    """Four panels: S/N map, target before/after, layers, S/N histogram.

    Parameters
    ----------
    result : MaskResult
    fig : `~matplotlib.figure.Figure`, optional
        Drawn into (cleared first); a new pyplot figure otherwise.
    title : str, optional

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(11, 9.2), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(2, 2)
    plot_snr_map(result, ax=axes[0, 0])
    plot_target_edits(result, ax=axes[0, 1])
    plot_layer_map(result, ax=axes[1, 0])
    plot_layer_histogram(result, ax=axes[1, 1])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
