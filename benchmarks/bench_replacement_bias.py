"""How far robust mode's replacement values sit from the truth on faint line targets.

For the faint cube kind of ``quality.py`` (seed 0 and its variants), every voxel
flagged where an artifact was injected, inside the target and the line window, is
compared with the artifact-free cube, in units of its ERR. A mean well below zero
means the replacements undershoot the line (a fit on noisy neighbour spectra dilutes
it); the spread includes the noise of the artifact-free values, about 1.

Run: ``.venv/bin/python benchmarks/bench_replacement_bias.py`` (a few seconds).
"""

import numpy as np
from quality import PHYSICAL, VARIANTS, layer_map_for, make_kind

from layerclip.clip import clip_cube


def replacement_errors(cube, lm, planes):
    """(replaced - artifact-free) / ERR of the flagged artifact voxels on the target's line."""
    result = clip_cube(cube.sci, cube.err, lm, method="robust")
    window = np.zeros(cube.sci.shape[0], bool)
    window[planes] = True
    chosen = (result.flags & cube.artifact_mask & window[:, None, None]
              & (lm > 0)[None])
    return ((result.sci - cube.clean) / cube.err)[chosen]


def main():
    settings = [("seed 0", {"seed": 0, **PHYSICAL})] + [(key, s) for key, _, s in VARIANTS]
    print("faint target: replaced artifact voxels on the line, (value - artifact-free) / ERR")
    print(f"{'setting':<8}{'voxels':>8}{'mean':>8}{'median':>8}{'rms':>8}")
    for key, s in settings:
        cube = make_kind("faint", **s)
        lm, planes = layer_map_for(cube)
        d = replacement_errors(cube, lm, planes)
        if d.size == 0:
            print(f"{key:<8}{0:>8}")
            continue
        print(f"{key:<8}{d.size:>8}{d.mean():>+8.2f}{np.median(d):>+8.2f}"
              f"{np.sqrt((d ** 2).mean()):>8.2f}")


if __name__ == "__main__":
    main()
