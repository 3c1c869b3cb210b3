"""Cubes like those of ``benchmarks/quality.py``, for tests that pin one of its cases.

800 planes of a G140H-like grating on a 43 x 43 field, artifacts kept apart, 5% of
them meant for the brightest line's core; clipped with sky 0 and every spaxel whose
line reaches S/N 3 in layer 1.
"""

import numpy as np

from layerclip.clip import clip_cube
from layerclip.simulate import make_cube

_PLANE_WIDTH = 0.46 / 1959  # microns per plane
BENCHMARK = {"shape": (800, 43, 43), "wave_range": (1.095, 1.095 + 799 * _PLANE_WIDTH),
             "separate": True, "on_line_fraction": 0.05}


def benchmark_cube(kind, **settings):
    """``make_cube(kind)`` with the benchmark's geometry and artifact placement."""
    return make_cube(kind, **{**BENCHMARK, **settings})


def target_layer_map(cube):
    """Sky 0 on the footprint, 1 where the noise-free model reaches S/N 3, else -1."""
    lm = np.where(cube.footprint, 0, -1).astype(np.int16)
    with np.errstate(invalid="ignore"):
        lm[(cube.model / cube.err).max(axis=0) > 3] = 1
    return lm


def clip_target(cube, **options):
    """Robust ``clip_cube`` of ``cube`` with :func:`target_layer_map`."""
    return clip_cube(cube.sci, cube.err, target_layer_map(cube), **options)


def flags_on_signal(result, cube):
    """Flags where no artifact was injected and the model exceeds 10 ERR."""
    with np.errstate(invalid="ignore"):
        return result.flags & ~cube.artifact_mask & (cube.model > 10 * cube.err)
