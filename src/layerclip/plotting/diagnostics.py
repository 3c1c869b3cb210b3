"""Figures of Hutchison et al. (2024) for any cube: Fig. 2, 3, 4 and benchmark spectra.

Everything here draws arrays (from :mod:`layerclip.diagnostics` or a
:class:`~layerclip.io.Cube`), so it works the same for JWST, MUSE and KCWI cubes.
matplotlib is imported inside each function; each takes ``ax=None`` or ``fig=None``
and returns the figure it drew on.
"""

import numpy as np

__all__ = [
    "plot_layers_slice",
    "plot_slice_comparison",
    "plot_integrated_spectra",
    "plot_residual_histogram",
    "plot_integrated_comparison",
    "plot_benchmark_spectrum",
    "plot_benchmark_spectra",
    "CUBE_COLOURS",
]

#: Colours of compared cubes, in order (the paper: black = layerclip, green = pipeline,
#: blue = both); the uncleaned reference is drawn faint grey underneath.
CUBE_COLOURS = ("black", "tab:green", "tab:blue", "tab:orange", "tab:red", "tab:purple")
REFERENCE_COLOUR = "0.75"


def _figure(fig, ncols, *, width=4.2, height=3.8, nrows=1):
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(width * ncols, height * nrows), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _limits(image, *, lo=1.0, hi=99.5):
    values = np.asarray(image, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(values, [lo, hi])
    if vmax <= vmin:
        vmax = vmin + 1.0
    return float(vmin), float(vmax)


def _cmap(name="viridis"):
    import matplotlib as mpl

    return mpl.colormaps[name].with_extremes(bad="white")


def _layer_image(ax, layer_map):
    """Draw a layer map with one colour per group; returns the legend handles."""
    import matplotlib as mpl
    from matplotlib.patches import Patch

    layer_map = np.asarray(layer_map)
    n = max(int(layer_map.max()), 0)
    colours = ["white", "0.85"] + [mpl.colormaps["plasma"](0.15 + 0.7 * i / max(n - 1, 1))
                                   for i in range(n)]
    cmap = mpl.colors.ListedColormap(colours)
    norm = mpl.colors.BoundaryNorm(np.arange(-1.5, n + 1.0), cmap.N)
    ax.imshow(layer_map, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    handles = [Patch(facecolor="0.85", edgecolor="0.5", label="sky")]
    handles += [Patch(facecolor=colours[2 + i], label=f"layer {i + 1}") for i in range(n)]
    return handles


def _shade_sky(ax, layer_map):
    """Grey veil over sky spaxels, to bring out the target (as the paper's Fig. 2)."""
    veil = np.zeros(np.shape(layer_map) + (4,))
    veil[np.asarray(layer_map) == 0] = (0.35, 0.35, 0.35, 0.75)
    ax.imshow(veil, origin="lower", interpolation="nearest")


def _mark(ax, spaxels, colour="red"):
    for i, (y, x) in enumerate(spaxels or ()):
        ax.plot(x, y, marker="s", ms=9, mfc="none", mec=colour, mew=1.5)
        ax.annotate(str(i + 1), (x, y), xytext=(4, 4), textcoords="offset points",
                    color=colour, fontsize=8, fontweight="bold")


def _plane_title(plane, wavelength):
    if plane is None:
        return ""
    text = f"slice {plane}"
    if wavelength is not None:
        text += f" ({wavelength[plane]:.5f} um)"
    return text


def plot_layers_slice(layer_map, before, after, *, plane=None, wavelength=None, unit="",
                      fig=None):
    """Paper Fig. 2: the S/N layers, and a benchmark slice before and after (sky shaded).

    Parameters
    ----------
    layer_map : ndarray of int, shape (ny, nx)
    before, after : ndarray, shape (ny, nx)
        The benchmark slice from the original and the cleaned cube.
    plane : int, optional
        Slice index, for the title.
    wavelength : ndarray, optional
        Wavelength of every plane, microns (for the title).
    unit : str, optional
        Flux unit for the colour bar.
    fig : `~matplotlib.figure.Figure`, optional

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    fig, axes = _figure(fig, 3)
    ax0, ax1, ax2 = axes[0]
    handles = _layer_image(ax0, layer_map)
    ax0.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.8)
    ax0.set_title("S/N layers of the target mask")
    target = np.asarray(layer_map) > 0
    vmin, vmax = _limits(np.where(target, after, np.nan) if target.any() else after)
    cmap = _cmap()
    for ax, image, name in ((ax1, before, "original"), (ax2, after, "cleaned")):
        im = ax.imshow(image, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        _shade_sky(ax, layer_map)
        ax.set_title(f"{name}\n{_plane_title(plane, wavelength)}", fontsize=10)
    fig.colorbar(im, ax=[ax1, ax2], shrink=0.8, label=unit or "flux")
    for ax in axes[0]:
        ax.set_xlabel("x (spaxel)")
    ax0.set_ylabel("y (spaxel)")
    return fig


def plot_slice_comparison(before, after, flags, layer_map, *, plane=None, wavelength=None,
                          unit="", spaxels=None, fig=None):
    """Paper Fig. 3: a benchmark slice original / cleaned / log of replaced voxels.

    The right panel shows the replaced voxels (blue) with the target mask underlaid
    (grey), so replacements on and off the target can be told apart.

    Parameters
    ----------
    before, after : ndarray, shape (ny, nx)
    flags : ndarray of bool, shape (ny, nx)
        True where the voxel was replaced.
    layer_map : ndarray of int, shape (ny, nx)
    plane : int, optional
    wavelength : ndarray, optional
    unit : str, optional
    spaxels : sequence of (y, x), optional
        Benchmark spaxels to outline.
    fig : `~matplotlib.figure.Figure`, optional

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    import matplotlib as mpl
    from matplotlib.patches import Patch

    fig, axes = _figure(fig, 3)
    ax0, ax1, ax2 = axes[0]
    vmin, vmax = _limits(after)
    cmap = _cmap()
    for ax, image, name in ((ax0, before, "original"), (ax1, after, "cleaned")):
        im = ax.imshow(image, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(f"{name}\n{_plane_title(plane, wavelength)}", fontsize=10)
        _mark(ax, spaxels)
    fig.colorbar(im, ax=[ax0, ax1], shrink=0.8, label=unit or "flux")
    layer_map = np.asarray(layer_map)
    flags = np.asarray(flags, dtype=bool)
    codes = np.where(layer_map < 0, 0, np.where(layer_map == 0, 1, 2))
    codes = np.where(flags, 3, codes)
    log_cmap = mpl.colors.ListedColormap(["white", "0.95", "0.6", "tab:blue"])
    ax2.imshow(codes, origin="lower", cmap=log_cmap, vmin=-0.5, vmax=3.5,
               interpolation="nearest")
    n_target = int((flags & (layer_map > 0)).sum())
    n_sky = int((flags & (layer_map == 0)).sum())
    ax2.set_title(f"replaced voxels: {n_sky} sky, {n_target} target", fontsize=10)
    ax2.legend(handles=[Patch(facecolor="0.6", label="target mask"),
                        Patch(facecolor="tab:blue", label="replaced")],
               loc="upper right", fontsize=7, framealpha=0.8)
    _mark(ax2, spaxels)
    for ax in axes[0]:
        ax.set_xlabel("x (spaxel)")
    ax0.set_ylabel("y (spaxel)")
    return fig


def _shade_masked(ax, wavelength, mask, *, label="masked (lines)"):
    if mask is None or not np.any(mask):
        return
    import matplotlib.transforms as mtransforms

    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.fill_between(wavelength, 0, 1, where=np.asarray(mask, dtype=bool), step="mid",
                    color="gold", alpha=0.25, lw=0, transform=trans, label=label)


def plot_integrated_spectra(wavelength, spectra, *, labels=None, reference=None,
                            reference_label="no cleaning", wave_range=None, unit="",
                            spikes=None, reference_spikes=None, line_mask=None, ax=None):
    """Integrated target spectra of several cubes overlaid (left panel of Fig. 4).

    Parameters
    ----------
    wavelength : ndarray, shape (nw,)
        Microns.
    spectra : sequence of ndarray
        Integrated spectra, one per cube, drawn in :data:`CUBE_COLOURS` order.
    labels : sequence of str, optional
    reference : ndarray, optional
        The uncleaned spectrum, drawn faint grey underneath.
    wave_range : (float, float), optional
        Range shown, microns.
    unit : str, optional
    spikes : sequence of SpikeCount, optional
        Leftover spikes to mark (one per spectrum).
    reference_spikes : SpikeCount, optional
        Spikes of the reference spectrum, marked in grey.
    line_mask : ndarray of bool, optional
        Masked planes, shaded.
    ax : `~matplotlib.axes.Axes`, optional

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    wave = np.asarray(wavelength, dtype=float)
    labels = labels or [f"cube {i + 1}" for i in range(len(spectra))]
    shown = np.ones(wave.shape, dtype=bool)
    if wave_range is not None:
        shown = (wave >= min(wave_range)) & (wave <= max(wave_range))
    if reference is not None:
        reference = np.asarray(reference)
        text = reference_label
        if reference_spikes is not None:
            text = f"{reference_label}: {reference_spikes.count} spikes"
        ax.plot(wave[shown], reference[shown], color=REFERENCE_COLOUR, lw=0.8,
                drawstyle="steps-mid", label=text, zorder=1)
        if reference_spikes is not None and reference_spikes.count:
            peaks = reference_spikes.peaks[shown[reference_spikes.peaks]]
            ax.plot(wave[peaks], reference[peaks], "v", color="0.55", ms=4, mfc="none",
                    zorder=1)
    for i, (spec, label) in enumerate(zip(spectra, labels, strict=True)):
        colour = CUBE_COLOURS[i % len(CUBE_COLOURS)]
        spec = np.asarray(spec)
        text = label if spikes is None else f"{label}: {spikes[i].count} spikes"
        ax.plot(wave[shown], spec[shown], color=colour, lw=0.8, drawstyle="steps-mid",
                label=text, zorder=2 + i)
        if spikes is not None and spikes[i].count:
            peaks = spikes[i].peaks[shown[spikes[i].peaks]]
            ax.plot(wave[peaks], spec[peaks], "v", color=colour, ms=5, zorder=10,
                    mfc="none")
    _shade_masked(ax, wave[shown], None if line_mask is None else np.asarray(line_mask)[shown])
    ax.set_xlabel("observed wavelength (um)")
    ax.set_ylabel(f"integrated flux density ({unit})" if unit else "integrated flux density")
    ax.set_title("spatially integrated target spectrum")
    ax.legend(fontsize=8, loc="upper left")
    return ax.figure


def plot_residual_histogram(residuals, *, labels=None, unit="", threshold=None, bins=60,
                            reference=None, reference_label="no cleaning", ax=None):
    """Histogram of continuum-subtracted, line-masked flux densities (right of Fig. 4).

    Parameters
    ----------
    residuals : sequence of ndarray
        Continuum-subtracted spectra, NaN on masked planes.
    labels : sequence of str, optional
    unit : str, optional
    threshold : float, optional
        Spike threshold, drawn as dashed lines at plus and minus its value.
    bins : int, optional
    reference : ndarray, optional
        Residual of the uncleaned cube, drawn as a faint filled histogram behind.
    ax : `~matplotlib.axes.Axes`, optional

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
    labels = labels or [f"cube {i + 1}" for i in range(len(residuals))]
    finite = [np.asarray(r, dtype=float)[np.isfinite(r)] for r in residuals]
    ref = None if reference is None else np.asarray(reference, dtype=float)
    ref = None if ref is None else ref[np.isfinite(ref)]
    allv = np.concatenate(finite + ([ref] if ref is not None else [])) if finite else np.zeros(0)
    if allv.size:
        lo, hi = float(allv.min()), float(allv.max())
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, int(bins) + 1)
        if ref is not None and ref.size:
            ax.hist(ref, bins=edges, histtype="stepfilled", color=REFERENCE_COLOUR,
                    alpha=0.6, label=reference_label)
        for i, (vals, label) in enumerate(zip(finite, labels, strict=True)):
            ax.hist(vals, bins=edges, histtype="step", lw=1.4,
                    color=CUBE_COLOURS[i % len(CUBE_COLOURS)], label=label)
    ax.set_yscale("log")
    if threshold is not None and np.isfinite(threshold):
        for t in (-threshold, threshold):
            ax.axvline(t, color="0.4", ls="--", lw=0.8)
    ax.set_xlabel(f"flux density ({unit})" if unit else "flux density")
    ax.set_ylabel("planes")
    ax.set_title("continuum-subtracted, lines masked", fontsize=10)
    ax.legend(fontsize=8)
    return ax.figure


def plot_integrated_comparison(wavelength, spectra, residuals, *, labels=None,
                               reference=None, reference_label="no cleaning",
                               reference_residual=None, reference_spikes=None,
                               wave_range=None, unit="", spikes=None, line_mask=None,
                               fig=None):
    """Paper Fig. 4: integrated spectra overlaid (left) and residual histogram (right).

    Parameters are those of :func:`plot_integrated_spectra` and
    :func:`plot_residual_histogram`; ``spikes`` also sets the histogram threshold.
    The paper leaves the uncleaned cube out of the histogram; give
    ``reference_residual`` to draw it faintly behind.

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(13, 4.3), layout="constrained")
    else:
        fig.clear()
    ax0, ax1 = fig.subplots(1, 2, width_ratios=[2.3, 1])
    plot_integrated_spectra(wavelength, spectra, labels=labels, reference=reference,
                            reference_label=reference_label, wave_range=wave_range,
                            unit=unit, spikes=spikes, reference_spikes=reference_spikes,
                            line_mask=line_mask, ax=ax0)
    threshold = None
    if spikes:
        noise = np.asarray(spikes[0].noise, dtype=float)
        if noise.ndim == 0:
            threshold = float(spikes[0].nsigma * noise)
    shown, ref = list(residuals), reference_residual
    if wave_range is not None:
        wave = np.asarray(wavelength)
        keep = (wave >= min(wave_range)) & (wave <= max(wave_range))
        shown = [np.where(keep, r, np.nan) for r in residuals]
        ref = None if ref is None else np.where(keep, ref, np.nan)
    plot_residual_histogram(shown, labels=labels, unit=unit, threshold=threshold,
                            reference=ref, reference_label=reference_label, ax=ax1)
    return fig


def plot_benchmark_spectrum(wavelength, before, after, *, flags=None, plane=None,
                            window=None, unit="", title=None, ax=None):
    """One benchmark spaxel's spectrum before (grey) and after (black) cleaning.

    Parameters
    ----------
    wavelength : ndarray, shape (nw,)
    before, after : ndarray, shape (nw,)
    flags : ndarray of bool, shape (nw,), optional
        Replaced planes, marked with blue circles.
    plane : int, optional
        Benchmark slice, marked with a dotted line.
    window : int, optional
        Planes shown on each side of ``plane`` (default: everything).
    unit : str, optional
    title : str, optional
    ax : `~matplotlib.axes.Axes`, optional

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3), layout="constrained")
    wave = np.asarray(wavelength, dtype=float)
    sl = slice(None)
    if plane is not None and window is not None:
        sl = slice(max(0, plane - window), min(wave.size, plane + window + 1))
    w = wave[sl]
    b = np.asarray(before)[sl]
    a = np.asarray(after)[sl]
    from matplotlib.ticker import MaxNLocator

    ax.plot(w, b, color="0.6", lw=1.0, drawstyle="steps-mid", label="original")
    ax.plot(w, a, color="black", lw=0.9, drawstyle="steps-mid", label="cleaned")
    # The cleaned spectrum sets the y range, extended at most 4 times its span towards
    # the artifacts: a huge spike leaves the box instead of flattening the signal.
    lo, hi = _limits(a, lo=0.0, hi=100.0)
    blo, bhi = _limits(b, lo=0.0, hi=100.0)
    span = hi - lo
    ymin = min(lo, max(blo, lo - 4 * span)) - 0.1 * span
    ymax = max(hi, min(bhi, hi + 4 * span)) + 0.1 * span
    ax.set_ylim(ymin, ymax)
    if flags is not None:
        f = np.asarray(flags, dtype=bool)[sl]
        if f.any():
            # Markers of replaced values beyond the box sit on its edge.
            ax.plot(w[f], np.clip(b[f], ymin, ymax), "o", mfc="none", mec="tab:blue", ms=6,
                    label="replaced", clip_on=False)
    if plane is not None:
        ax.axvline(wave[plane], color="tab:red", ls=":", lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("wavelength (um)", fontsize=8)
    ax.set_ylabel(unit or "flux", fontsize=8)
    ax.tick_params(labelsize=7)
    return ax.figure


def plot_benchmark_spectra(wavelength, original, cleaned, flags, spaxels, *, plane,
                           kinds=None, layers=None, group="sky", window=40, unit="",
                           fig=None):
    """Benchmark spaxel spectra before and after, one panel each (paper §2.2.1-2.2.2).

    Parameters
    ----------
    wavelength : ndarray, shape (nw,)
    original, cleaned : ndarray, shape (nw, ny, nx)
    flags : ndarray of bool, shape (nw, ny, nx) or None
    spaxels : sequence of (y, x)
    plane : int
        Benchmark slice; spectra are shown ``window`` planes either side of it.
    kinds, layers : sequence, optional
        Per spaxel: ``"normal"``/``"replaced"`` and the layer, for the titles.
    group : str, optional
        ``"sky"`` or ``"target"``, for the figure title.
    window : int, optional
    unit : str, optional
    fig : `~matplotlib.figure.Figure`, optional

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    n = max(len(spaxels), 1)
    fig, axes = _figure(fig, n, width=3.6, height=2.9)
    for i, (y, x) in enumerate(spaxels):
        bits = [f"#{i + 1} (y={y}, x={x})"]
        if layers is not None:
            bits.append(f"layer {layers[i]}")
        if kinds is not None:
            bits.append(kinds[i])
        plot_benchmark_spectrum(wavelength, original[:, y, x], cleaned[:, y, x],
                                flags=None if flags is None else flags[:, y, x],
                                plane=plane, window=window, unit=unit,
                                title=", ".join(bits), ax=axes[0, i])
    if not spaxels:
        axes[0, 0].text(0.5, 0.5, f"no {group} spaxels", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{group} benchmark spaxels around slice {plane}", fontsize=11)
    return fig
