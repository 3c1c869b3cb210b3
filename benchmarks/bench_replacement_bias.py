"""How far robust mode's replacement values sit from the truth on faint line targets.

For the faint cube kind of ``quality.py`` (seed 0 and its variants), every voxel
flagged where an artifact was injected, inside the target and the line window, is
compared with the artifact-free cube, in units of its ERR. A mean well below zero
means the replacements undershoot the line (a fit on noisy neighbour spectra dilutes
it); the spread includes the noise of the artifact-free values, about 1.

A handful of voxels per setting leaves the mean uncertain by a few tenths of an ERR,
so a second table pools 20 more seeds (the four settings in turn) and compares with
the noise-free line instead, by the line's S/N at the voxel.

Run: ``.venv/bin/python benchmarks/bench_replacement_bias.py`` (under a minute).
"""

import numpy as np
from quality import PHYSICAL, VARIANTS, layer_map_for, make_kind

from layerclip.clip import clip_cube
from layerclip.errors import LayerclipError

POOLED_SEEDS = range(10, 30)
SNR_BINS = [(-np.inf, 0.3), (0.3, 1.0), (1.0, 2.0), (2.0, np.inf)]


def replaced_on_line(cube, lm, planes):
    """Robust mode's result and the flagged artifact voxels on the target's line."""
    result = clip_cube(cube.sci, cube.err, lm, method="robust")
    window = np.zeros(cube.sci.shape[0], bool)
    window[planes] = True
    chosen = (result.flags & cube.artifact_mask & window[:, None, None]
              & (lm > 0)[None])
    return result, chosen


def per_setting():
    settings = [("seed 0", {"seed": 0, **PHYSICAL})] + [(key, s) for key, _, s in VARIANTS]
    print("faint target: replaced artifact voxels on the line, (value - artifact-free) / ERR")
    print(f"{'setting':<8}{'voxels':>8}{'mean':>8}{'median':>8}{'rms':>8}")
    for key, s in settings:
        cube = make_kind("faint", **s)
        lm, planes = layer_map_for(cube)
        result, chosen = replaced_on_line(cube, lm, planes)
        d = ((result.sci - cube.clean) / cube.err)[chosen]
        if d.size == 0:
            print(f"{key:<8}{0:>8}")
            continue
        print(f"{key:<8}{d.size:>8}{d.mean():>+8.2f}{np.median(d):>+8.2f}"
              f"{np.sqrt((d ** 2).mean()):>8.2f}")


def pooled():
    kept_apart = [PHYSICAL] + [s for _, _, s in VARIANTS if s.get("separate")]
    errors, snr, used = [], [], 0
    for seed in POOLED_SEEDS:
        s = {**kept_apart[seed % len(kept_apart)], "seed": seed}
        cube = make_kind("faint", **s)
        try:
            lm, planes = layer_map_for(cube)
        except LayerclipError:
            continue  # no target found on this seed's noise: nothing to score
        result, chosen = replaced_on_line(cube, lm, planes)
        errors.append(((result.sci - cube.model) / cube.err)[chosen])
        snr.append((cube.model / cube.err)[chosen])
        used += 1
    d, snr = np.concatenate(errors), np.concatenate(snr)
    print(f"\npooled over {used} faint cubes (seeds {POOLED_SEEDS.start}-"
          f"{POOLED_SEEDS.stop - 1}, settings in turn): (value - noise-free) / ERR")
    print(f"{'line S/N':<10}{'voxels':>8}{'mean':>8}{'+-':>6}{'rms':>8}")
    for lo, hi in [(-np.inf, np.inf)] + SNR_BINS:
        m = (snr >= lo) & (snr < hi)
        label = "all" if np.isinf(lo) and np.isinf(hi) else f"{max(lo, 0):g}-{hi:g}"
        sem = d[m].std() / np.sqrt(m.sum())
        print(f"{label:<10}{m.sum():>8}{d[m].mean():>+8.2f}{sem:>6.2f}"
              f"{np.sqrt((d[m] ** 2).mean()):>8.2f}")


if __name__ == "__main__":
    per_setting()
    pooled()
