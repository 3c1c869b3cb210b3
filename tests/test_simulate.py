"""The synthetic-cube generator keeps artifacts apart when asked to."""

import numpy as np
import pytest

from layerclip.simulate import make_cube

SHAPE = {"shape": (400, 43, 43), "wave_range": (1.095, 1.095 + 399 * 0.46 / 1959)}


def _boxes_overlap(a, b):
    """Whether two artifacts come within 2 planes and 2 spaxels of each other."""
    near_k = np.abs(a.planes[:, None] - b.planes[None]) <= 2
    near_y = np.abs(a.ys[:, None] - b.ys[None]) <= 2
    near_x = np.abs(a.xs[:, None] - b.xs[None]) <= 2
    return bool((near_k & near_y & near_x).any())


@pytest.mark.parametrize("kind", ["arc", "compact"])
def test_separate_artifacts_do_not_pile_up_on_the_line(kind):
    cube = make_cube(kind, seed=2, n_artifacts=120, separate=True, on_line_fraction=0.08,
                     **SHAPE)
    arts = cube.artifacts
    assert len(arts) == 120
    piled = sum(_boxes_overlap(a, b) for i, a in enumerate(arts) for b in arts[i + 1:])
    assert piled == 0
    # those on the line sit where the line is bright
    on_line = [a for a in arts if a.on_line]
    assert on_line
    for a in on_line:
        vox = a.planes[0], a.ys[0], a.xs[0]
        assert cube.model[vox] > 5 * cube.err[vox]


def test_default_lets_artifacts_pile_up_on_a_compact_core():
    cube = make_cube("compact", seed=2, n_artifacts=60, on_line_fraction=0.2, **SHAPE)
    on_line = [a for a in cube.artifacts if a.on_line]
    piled = sum(_boxes_overlap(a, b) for i, a in enumerate(on_line) for b in on_line[i + 1:])
    assert piled > 0
