"""What the automatic mask-and-layer rule chooses on seeded synthetic targets.

Full-size cubes (seed 2024): arc reaching the field edge, compact core, faint
target, faint target with a bright neighbour (threshold only, and with photutils
segmentation rejecting the neighbour). Prints the layers chosen and how well the
target matches the noise-free model (true S/N >= 5 recovered; spaxels with true
S/N < 1.5 wrongly included).

Run: .venv/bin/python benchmarks/bench_masks_auto.py
"""
import warnings

import numpy as np

from layerclip.masks import MaskSpec, build_mask, line_snr_map
from layerclip.simulate import make_cube
from layerclip.snr import collapsed_snr

cases = [("arc", {}, {}), ("compact", {}, {}), ("faint", {"peak_snr": 12.0}, {}),
         ("faint", {"peak_snr": 12.0, "neighbour": {"peak_snr": 60.0}}, {}),
         ("faint", {"peak_snr": 12.0, "neighbour": {"peak_snr": 60.0}},
          {"segmentation": True, "reject_at": [[30, 29]]})]
for kind, mk, extra in cases:
    sc = make_cube(kind, seed=2024, **mk)
    exc = ~np.isfinite(sc.sci) | ((sc.dq & 1) != 0)
    m = line_snr_map(sc.sci, sc.err, sc.wavelength, lines=[sc.line], z=sc.z, excluded=exc)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = build_mask(m, MaskSpec(lines=[sc.line], z=sc.z, rank="robust", **extra),
                         no_data=exc.all(0))
    model = sc.model if sc.neighbour_model is None else sc.model - np.nan_to_num(sc.neighbour_model)
    true, _ = collapsed_snr(model, sc.err, m.planes)
    tgt = res.layer_map >= 1
    truth5 = (true >= 5) & sc.footprint
    label = kind + (" +neighbour" if "neighbour" in mk else "")
    label += " +segmentation" if extra else ""
    extra_nb = ""
    if sc.neighbour_model is not None:
        nb, _ = collapsed_snr(sc.neighbour_model, sc.err, m.planes)
        nbm = (nb > 3) & (nb > true)
        extra_nb = (f"; neighbour-dominated spaxels in target "
                    f"{int((tgt & nbm).sum())}/{int(nbm.sum())}")
    counts = ", ".join(f"L{r['layer']} {r['count']} (S/N {r['snr_min']:.3g}-{r['snr_max']:.3g})"
                       for r in res.counts() if r["layer"] > 0)
    print(f"{label}: target {int(tgt.sum())} spaxels; {res.choice.n_layers} layers "
          f"(asked {res.choice.asked}, min size {res.choice.min_size}): {counts}; "
          f"recovered {int((tgt & truth5).sum())}/{int(truth5.sum())} spaxels with true S/N>=5; "
          f"target spaxels with true S/N<1.5: {int((tgt & (true < 1.5)).sum())}; "
          f"ranked by neighbours {int(res.ranked_by_neighbours.sum())}{extra_nb}"
          + (f"; warnings: {[str(x.message) for x in w]}" if w else ""))
