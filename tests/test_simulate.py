"""The synthetic-cube generator keeps artifacts apart when asked to."""

import numpy as np
import pytest

from layerclip.simulate import inject_artifacts, make_cube

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


def test_correlated_noise_keeps_err_and_the_artifacts():
    white = make_cube("arc", seed=3, **SHAPE)
    cube = make_cube("arc", seed=3, noise_correlation=0.7, **SHAPE)
    noise = (cube.clean - cube.model) / cube.err
    inside = cube.footprint
    assert noise[:, inside].std() == pytest.approx(1.0, abs=0.01)
    # neighbours along x and two spaxels apart correlate as the smoothing kernel's
    # autocorrelation says (computed here from a Gaussian sampled independently)
    offsets = np.arange(-4, 5)
    kernel = np.exp(-0.5 * (offsets / 0.7) ** 2)
    for lag, tol in ((1, 0.02), (2, 0.02)):
        expected = (kernel[:-lag] * kernel[lag:]).sum() / (kernel ** 2).sum()
        both = inside[:, :-lag] & inside[:, lag:]
        r = np.corrcoef(noise[:, :, :-lag][:, both].ravel(),
                        noise[:, :, lag:][:, both].ravel())[0, 1]
        assert r == pytest.approx(expected, abs=tol)
    # white noise does not correlate
    w = (white.clean - white.model) / white.err
    both = inside[:, :-1] & inside[:, 1:]
    r = np.corrcoef(w[:, :, :-1][:, both].ravel(), w[:, :, 1:][:, both].ravel())[0, 1]
    assert abs(r) < 0.01
    # the same draws: artifacts and signal as in the cube without correlation
    assert len(cube.artifacts) == len(white.artifacts)
    for a, b in zip(cube.artifacts, white.artifacts, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.planes, b.planes)
    np.testing.assert_array_equal(cube.model, white.model)


def test_err_scale_misstates_only_the_err_array():
    true = make_cube("compact", seed=1, **SHAPE)
    under = make_cube("compact", seed=1, err_scale=0.7, **SHAPE)
    np.testing.assert_allclose(under.err, 0.7 * true.err, rtol=1e-6)
    np.testing.assert_array_equal(under.sci, true.sci)
    np.testing.assert_array_equal(under.clean, true.clean)


@pytest.mark.parametrize("option", [{"noise_correlation": -0.5}, {"err_scale": 0.0}, {"holes": 1.0},
                                    {"noise_correlation": float("nan")}])
def test_bad_noise_options_are_refused(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=name):
        make_cube("arc", seed=0, **option, **SHAPE)


def test_holes_leave_voxels_without_data_and_the_rest_alone():
    full = make_cube("arc", seed=2, **SHAPE)
    holed = make_cube("arc", seed=2, holes=0.02, **SHAPE)
    hole = np.isnan(holed.sci) & full.footprint[None]
    assert hole[:, full.footprint].mean() == pytest.approx(0.02, abs=0.002)
    assert np.isnan(holed.err[hole]).all()
    assert (holed.dq[hole] & 1).all()
    np.testing.assert_array_equal(holed.sci[~hole], full.sci[~hole])
    np.testing.assert_array_equal(holed.clean, full.clean)
    assert len(holed.artifacts) == len(full.artifacts)


def test_inject_artifacts_on_any_cube_follows_the_artifact_model():
    # the artifact model on a cube the generator did not make (as
    # benchmarks/quality_real.py uses it on real cubes): inside the footprint,
    # amplitudes in units of the given ERR, kept apart, the first ones on the core
    rng = np.random.default_rng(7)
    err = rng.uniform(0.5, 2.0, size=(120, 20, 16))
    footprint = np.zeros((20, 16), bool)
    footprint[2:18, 3:14] = True
    core_spaxels = np.array([(9, 8), (10, 8)])
    values, arts = inject_artifacts(rng, err, footprint, n_artifacts=30, n_on_signal=3,
                                    core_spaxels=core_spaxels, core_planes=np.arange(50, 55),
                                    signal_voxels=np.argwhere(np.broadcast_to(footprint,
                                                                              err.shape)),
                                    separate=True)
    assert len(arts) == 30
    total = np.zeros(err.shape)
    for a in arts:
        assert footprint[a.ys, a.xs].all()
        assert 1 <= len(set(a.planes)) <= 3 and 1 <= len(set(zip(a.ys, a.xs, strict=True))) <= 4
        peak = np.max(np.abs(a.values) / err[a.voxels])
        assert peak == pytest.approx(abs(a.peak_sigma))
        assert 3.0 <= abs(a.peak_sigma) <= 3000.0
        np.add.at(total, a.voxels, a.values)
    np.testing.assert_allclose(values, total)
    assert sum(_boxes_overlap(a, b) for i, a in enumerate(arts) for b in arts[i + 1:]) == 0
    first = arts[0]
    assert first.on_line and (first.ys[0], first.xs[0]) in {(9, 8), (10, 8)}
    assert 50 <= first.planes[0] < 55
    assert not any(a.on_line for a in arts[3:])
