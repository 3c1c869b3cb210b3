"""Robust mode: catches what paper mode misses, spares real signal, works block by block."""

import numpy as np
import pytest
from benchmark_cubes import benchmark_cube, clip_target, flags_on_signal, target_layer_map

from layerclip.clip import clip_cube, halo_planes
from layerclip.errors import OptionError
from layerclip.io import read_cube
from layerclip.pipeline import clean_file
from layerclip.robust import (
    DEFAULTS,
    _screen,
    compact_planes,
    masked_median,
    neighbour_table,
)
from layerclip.robust_fits import count_unusable
from layerclip.robust_passes import _bound_replacements, _guard_short_runs, _predict
from layerclip.simulate import Artifact, make_cube

SMALL = {"shape": (160, 21, 21), "fov_size": 16, "wave_range": (1.148, 1.185)}


def _with_artifact(cube, k, y, x, nsigma):
    """Copy of ``cube.sci`` with one single-voxel artifact of ``nsigma`` x ERR added."""
    sci = cube.sci.copy()
    sci[k, y, x] += nsigma * cube.err[k, y, x]
    return sci


def _line_peak(cube):
    """Plane and spaxel of the brightest voxel of the noise-free model."""
    model = np.nan_to_num(cube.model, nan=-np.inf)
    return np.unravel_index(np.argmax(model), model.shape)


def _peak_voxel(art):
    """(plane, y, x) of an artifact's largest injected value."""
    peak = int(np.argmax(np.abs(art.values)))
    return art.planes[peak], art.ys[peak], art.xs[peak]


@pytest.fixture(scope="module")
def compact():
    return make_cube("compact", seed=11, n_artifacts=0, **SMALL)


@pytest.fixture(scope="module")
def arc():
    return make_cube("arc", seed=5, n_artifacts=25, separate=True, **SMALL)


def _layer_map(cube, plane):
    """Sky 0, target 1, and a small bright layer 2 (a handful of spaxels)."""
    lm = np.where(cube.footprint, 0, -1).astype(np.int16)
    snr = cube.model[plane] / cube.err[plane]
    lm[np.nan_to_num(snr) > 5] = 1
    lm[np.nan_to_num(snr) > 0.3 * np.nanmax(snr)] = 2
    return lm


def test_catches_artifact_on_bright_line_core_in_small_layer(compact):
    k, y, x = _line_peak(compact)
    lm = _layer_map(compact, k)
    assert (lm == 2).sum() < 25  # too small for a std-scaled 5-sigma clip
    sci = _with_artifact(compact, k, y, x, 1500.0)  # doubles the line peak
    paper = clip_cube(sci, compact.err, lm, method="paper")
    robust = clip_cube(sci, compact.err, lm, method="robust")
    assert not paper.flags[k, y, x]
    assert robust.flags[k, y, x]
    # the model replacement follows the line: close to the artifact-free value
    assert abs(robust.sci[k, y, x] - compact.clean[k, y, x]) < 0.05 * compact.model[k, y, x]
    # and nothing flagged on the real line
    no_art = np.ones(sci.shape, bool)
    no_art[k, y, x] = False
    assert not (robust.flags & no_art & (compact.model > 10 * compact.err)).any()


def test_clean_bright_line_with_velocity_gradient_is_not_flagged(compact, arc):
    for cube in (compact, arc):
        k, _, _ = _line_peak(cube)
        lm = _layer_map(cube, k)
        result = clip_cube(cube.clean, cube.err, lm)
        assert result.n_flagged <= 1  # a pure-noise 5-sigma event at most
        assert not (result.flags & (cube.model > 10 * cube.err)).any()


def test_artifacts_found_and_replaced(arc):
    k, _, _ = _line_peak(arc)
    lm = _layer_map(arc, k)
    result = clip_cube(arc.sci, arc.err, lm)
    strong = [a for a in arc.artifacts if abs(a.peak_sigma) > 30]
    assert len(strong) >= 10
    caught = 0
    for art in strong:
        vox = _peak_voxel(art)
        if result.flags[vox]:
            caught += 1
            assert abs(result.sci[vox] - arc.clean[vox]) < 10 * arc.err[vox]
    # all but one: the -47-sigma hit on the line (S/N 20), spread over three
    # spaxels and three planes, is missed today (see the xfail test below; the
    # 74-sigma hit over four spaxels at S/N 12 is caught since extrapolating
    # neighbours may side with the voxel)
    assert caught >= len(strong) - 1
    assert (result.flags & ~arc.artifact_mask).sum() <= 3


@pytest.mark.xfail(strict=True, reason="known limitation: a -47-sigma dip over three planes "
                   "of three spaxels of a faint line; without the hit neighbour the fit still "
                   "holds the dip's other planes in its window")
def test_residual_shared_by_neighbours_on_a_faint_line_is_caught(arc):
    k, _, _ = _line_peak(arc)
    result = clip_cube(arc.sci, arc.err, _layer_map(arc, k))
    on_line = [a for a in arc.artifacts if a.on_line and abs(a.peak_sigma) > 30
               and len(set(zip(a.ys, a.xs, strict=True))) >= 3]
    assert on_line
    for art in on_line:
        assert result.flags[_peak_voxel(art)]


def test_residual_spoiling_its_neighbours_prediction_is_caught_in_a_later_pass():
    # A residual over three adjacent spaxels of a bright line core (S/N 115-150):
    # each spaxel's first prediction leans on the other two, which carry it too,
    # and follows it. Once one of them is flagged, the refits of the others, with
    # it repaired, must be allowed to flag them although the first pass did not.
    cube = benchmark_cube("arc", seed=0)
    art = next(a for a in cube.artifacts
               if a.on_line and len(set(zip(a.ys, a.xs, strict=True))) == 3
               and abs(a.peak_sigma) > 300)
    result = clip_target(cube)
    vox = _peak_voxel(art)
    assert cube.model[vox] > 100 * cube.err[vox]
    assert result.flags[vox]
    assert abs(result.sci[vox] - cube.clean[vox]) < 10 * cube.err[vox]
    on_signal = flags_on_signal(result, cube)
    assert not on_signal.any()


def test_flagged_neighbour_with_a_poor_repair_does_not_spoil_the_refits():
    # A -744 sigma residual over four spaxels of a compact core at S/N 933. The
    # first predictions of the hit spaxels lean on each other and half follow the
    # dip, so a repaired value (a prediction) still carries it: refits that use
    # a flagged neighbour's repaired value see the dip, and flag real signal next
    # to it, and the hit spaxel's own refit follows it. Flagged neighbours are
    # left out of the basis instead.
    cube = benchmark_cube("compact", seed=3, peak_snr=4500.0)
    art = next(a for a in cube.artifacts if a.on_line and a.peak_sigma < -300)
    assert len(set(zip(art.ys, art.xs, strict=True))) == 4
    result = clip_target(cube)
    vox = _peak_voxel(art)
    assert cube.model[vox] > 900 * cube.err[vox]
    assert result.flags[vox]
    assert abs(result.sci[vox] - cube.clean[vox]) < 10 * cube.err[vox]
    on_signal = flags_on_signal(result, cube)
    k = art.planes[0]
    assert not on_signal[k - 2:k + 3].any()



def test_echo_of_a_neighbours_residual_is_not_flagged():
    # On the seed-3 compact core a -25-sigma residual at S/N 348, over three
    # spaxels, sits in the basis of the spaxel above it; that spaxel's fit
    # follows the dip and its real line (S/N 410, no artifact) stood out by 9.5
    # sigma the other way, was flagged and replaced 27 ERR low. A flag next to a
    # flag of the opposite sign is refitted without the flags and cleared.
    cube = benchmark_cube("compact", seed=3, peak_snr=4500.0)
    art = next(a for a in cube.artifacts if a.on_line and -30 < a.peak_sigma < -20)
    k, y, x = _peak_voxel(art)
    echo = (k, y - 1, x)
    assert not cube.artifact_mask[echo]
    assert cube.model[echo] > 300 * cube.err[echo]
    result = clip_target(cube)
    assert not result.flags[echo]
    assert not flags_on_signal(result, cube).any()

def test_residual_over_a_spaxel_and_three_of_its_neighbours_is_caught():
    # A 36-sigma residual over two planes of a broad arc line (S/N 94), spread onto
    # three of the spaxel's four edge neighbours (9-14 sigma there). The residual
    # sits in the basis of the spaxel's fit, and its second plane in the fit's
    # window: the prediction followed it and was vague by 25 ERR (1.7 on the
    # artifact-free cube). The single-neighbour fits of the three hit neighbours
    # side with the voxel; without them the spaxel is predicted within 2 ERR.
    cube = benchmark_cube("arc", seed=2, line_sigma_kms=120.0, n_artifacts=200)
    art = next(a for a in cube.artifacts if a.on_line and 30 < a.peak_sigma < 40)
    k, y, x = _peak_voxel(art)
    assert cube.model[k, y, x] > 80 * cube.err[k, y, x]
    hit = {(yy, xx) for yy, xx in zip(art.ys, art.xs, strict=True)}
    assert len(hit & {(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)}) == 3
    result = clip_target(cube)
    assert result.flags[k, y, x]
    assert abs(result.sci[k, y, x] - cube.clean[k, y, x]) < 5 * cube.err[k, y, x]
    assert not flags_on_signal(result, cube)[k - 3:k + 4].any()


def test_residual_part_whose_other_plane_the_siding_neighbours_explained_is_caught():
    # The same residual's 14-sigma part in the spaxel south of its peak (S/N 135),
    # with 6 sigma on the next plane. Its first fit holds the residual in its three
    # northern neighbours (36, 9 and 10 sigma), which also explain that next plane;
    # once they are left out as siding with the voxel, the joint fit misses the next
    # plane by 4 ERR and is vague by 10. The fit without the planes next to the voxel
    # predicts it within 2 ERR, stating 2.9: taken, the voxel is flagged and
    # replaced within 5 ERR (the worst spaxel of that cube went from 5.6 to 4.2
    # sigma in benchmarks/quality.py).
    cube = benchmark_cube("arc", seed=2, line_sigma_kms=120.0, n_artifacts=200)
    art = next(a for a in cube.artifacts if a.on_line and 30 < a.peak_sigma < 40)
    k, y, x = _peak_voxel(art)
    part = (k, y - 1, x)
    inj = {(kk, yy, xx): v for kk, yy, xx, v in zip(art.planes, art.ys, art.xs, art.values,
                                                    strict=True)}
    assert 10 < inj[part] / cube.err[part] < 20
    assert 3 < inj[(k + 1, y - 1, x)] / cube.err[k + 1, y - 1, x] < 10
    assert cube.model[part] > 100 * cube.err[part]
    result = clip_target(cube)
    assert result.flags[part]
    assert abs(result.sci[part] - cube.clean[part]) < 5 * cube.err[part]
    assert not flags_on_signal(result, cube)[k - 3:k + 4].any()


def test_residual_whose_hit_neighbours_half_hide_each_other_is_caught():
    # A 111-sigma residual over two planes and four spaxels of an arc line (S/N 56
    # at its peak): the peak spaxel and three edge neighbours (24-53 sigma there).
    # The first prediction followed it, vague by 23 ERR. Of the eight single-
    # neighbour fits, the two most hit stand apart from their median, but the
    # third (a brighter spaxel, so its fit scales the residual down) lies within
    # the bound of that median, which the two pull up; measured from the median of
    # the others it stands apart too, and without all three the spaxel is
    # predicted close enough to be flagged.
    cube = benchmark_cube("arc", seed=3, peak_snr=450.0)
    art = next(a for a in cube.artifacts if a.on_line and 100 < a.peak_sigma < 120)
    k, y, x = _peak_voxel(art)
    assert 40 < cube.model[k, y, x] / cube.err[k, y, x] < 80
    assert len(set(zip(art.ys, art.xs, strict=True))) == 4
    result = clip_target(cube)
    assert result.flags[k, y, x]
    assert abs(result.sci[k, y, x] - cube.clean[k, y, x]) < 40 * cube.err[k, y, x]


def _first_prediction(cube, k, y, x):
    """Robust mode's first-pass prediction of voxel (k, y, x) and its standard
    deviation, with :func:`clip_target`'s layers."""
    layer_map = target_layer_map(cube)
    index, neighbours = neighbour_table(layer_map)
    n = cube.sci.shape[0]
    flux = np.ascontiguousarray(cube.sci.reshape(n, -1)[:, index], dtype=float)
    err = np.ascontiguousarray(cube.err.reshape(n, -1)[:, index], dtype=float)
    usable = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    screen, _, _, bright, outlying, _ = _screen(
        flux, err, usable, layer_map.ravel()[index] == 0, neighbours,
        scale_window=DEFAULTS["scale_window"], bright_snr=DEFAULTS["bright_snr"],
        sigma=DEFAULTS["sigma"], candidate_sigma=DEFAULTS["candidate_sigma"])
    unusable_before = np.empty((n + 1, flux.shape[1]), np.int16)
    count_unusable(usable, unusable_before)
    s = np.flatnonzero(index == y * cube.sci.shape[2] + x)
    opts = {name: DEFAULTS[name]
            for name in ("half_window", "model_error", "candidate_sigma", "bright_snr")}
    value, variance = _predict(flux, err, usable, neighbours, np.array([k]), s, opts=opts,
                               unusable_before=unusable_before, exclude=(outlying,),
                               screen=screen, bright=bright)
    return value[0], np.sqrt(variance[0])


def test_faint_voxel_on_a_lines_rising_edge_is_not_predicted_from_the_slope():
    # Seed 5's arc with 60 km/s lines: a voxel at S/N 2 on the plane before a line
    # rises (neighbours at S/N 8-21 on the next plane), next to a 959-sigma residual
    # over two planes of three spaxels, one of them this one. Its neighbours hold no
    # signal on its plane, so it was judged by the median of single-neighbour fits
    # b + a n + c n', whose slope term followed the line's edge and whose window
    # held the residual: predicted 23 ERR high with an uncertainty of 1.2 (z = -14).
    # A slope across the plane now counts as signal, and the joint fit stands.
    cube = benchmark_cube("arc", seed=5, line_sigma_kms=60.0)
    k, y, x = 302, 25, 20
    assert not cube.artifact_mask[k, y, x] and cube.artifact_mask[k + 1, y, x]
    assert cube.model[k, y, x] < 3 * cube.err[k, y, x]
    value, sd = _first_prediction(cube, k, y, x)
    z = (cube.sci[k, y, x] - value) / np.hypot(cube.err[k, y, x], sd)
    assert abs(z) < 3
    assert abs(value - cube.clean[k, y, x]) < 3 * sd


def test_residual_over_three_planes_of_three_spaxels_on_a_narrow_line_is_caught():
    # Seed 6's arc with 60 km/s lines: a 700-sigma residual over three planes of
    # three spaxels (280, 700 and 245 sigma in this one) on a line's falling edge
    # (S/N 24 at the peak plane). Every neighbour stands out of its own spectrum
    # there (the line), so none was left out of the basis; the fit learned the
    # residual from the planes either side and predicted it (690 ERR high, within
    # 8). Of the single-neighbour fits, the two hit neighbours extrapolate and were
    # not weighed; they side with the voxel now, and without them the fit that
    # leaves out the planes either side agrees with the other neighbours, although
    # it misses both of those planes (the residual's tails).
    cube = benchmark_cube("arc", seed=6, line_sigma_kms=60.0)
    art = next(a for a in cube.artifacts if 650 < a.peak_sigma < 750)
    assert len(set(art.planes)) == 3 and len(set(zip(art.ys, art.xs, strict=True))) == 3
    k, y, x = _peak_voxel(art)
    assert 15 < cube.model[k, y, x] / cube.err[k, y, x] < 40
    value, sd = _first_prediction(cube, k, y, x)
    assert abs(value - cube.clean[k, y, x]) < 3 * np.hypot(sd, cube.err[k, y, x])
    result = clip_target(cube)
    voxels = art.planes, art.ys, art.xs
    strong = np.abs(art.values) > 10 * cube.err[voxels]
    assert result.flags[voxels][strong].all()
    assert np.all(np.abs(result.sci[k, y, x] - cube.clean[k, y, x]) < 10 * cube.err[k, y, x])


def test_refit_confirming_a_first_verdict_short_of_sigma_is_taken():
    # Seed 2's compact core with 120 km/s lines: a 40-sigma residual over three
    # planes of one spaxel (16, 40 and 14 sigma; line S/N 410 at its peak plane).
    # The first fit held its tails in the window and found the peak at 4.7
    # sigma; the refit, with the tails' neighbours flagged, at 16. On a bright
    # spectrum the weaker verdict stood, so it was missed, and the next spaxel,
    # whose prediction the residual pulled up, was flagged as a dip instead
    # (replaced 38 ERR high). Both fits beyond 3.5 sigma the same way now count as
    # agreement.
    cube = benchmark_cube("compact", seed=2, line_sigma_kms=120.0, n_artifacts=200)
    art = next(a for a in cube.artifacts if 39 < a.peak_sigma < 42)
    k, y, x = _peak_voxel(art)
    assert len(set(zip(art.ys, art.xs, strict=True))) == 1
    assert cube.model[k, y, x] > 300 * cube.err[k, y, x]
    result = clip_target(cube)
    assert result.flags[k, y, x]
    assert abs(result.sci[k, y, x] - cube.clean[k, y, x]) < 10 * cube.err[k, y, x]
    assert not flags_on_signal(result, cube)[k - 2:k + 3, y - 1:y + 2, x - 1:x + 2].any()


def test_vaguer_fit_without_siding_neighbours_is_taken_where_the_first_disagrees():
    # The stress cube's compact core (residuals piled on the line core): on planes
    # 302-304 of the brightest spaxel (S/N 300-1500) the first joint fit leaned on
    # neighbours whose single-neighbour fits side with the voxel, and put the plane
    # of the line's peak 18 sigma off. Without them the fit agrees with the other
    # neighbours' single fits but is vaguer (the spaxel's window still holds the
    # rest of the pile); it is taken now, as the first does not agree with them.
    cube = benchmark_cube("compact", seed=0, separate=False, on_line_fraction=0.2)
    peak = np.unravel_index(np.nanargmax(cube.model[303]), cube.model.shape[1:])
    assert peak == (22, 20)
    result = clip_target(cube)
    assert not flags_on_signal(result, cube)[301:306].any()


def test_first_verdict_stands_where_the_refit_leans_on_neighbours_it_set_aside():
    # Seed 5's arc with 60 km/s lines: a 426-sigma residual over three planes of
    # four spaxels, its peak on the plane of the line's peak (S/N 32 there). The
    # first prediction of that peak left out the three hit neighbours (their
    # single fits sided with it) and found it at 68 sigma. The refit, made once
    # the spaxel's other two planes were flagged but none of the neighbours,
    # held them in its basis again and followed the residual; on a line the
    # weaker verdict stood, and the residual was left whole.
    cube = benchmark_cube("arc", seed=5, line_sigma_kms=60.0)
    art = next(a for a in cube.artifacts if 400 < a.peak_sigma < 450)
    assert len(set(art.planes)) == 3 and len(set(zip(art.ys, art.xs, strict=True))) == 4
    k, y, x = _peak_voxel(art)
    result = clip_target(cube)
    assert result.flags[k, y, x]
    assert abs(result.sci[k, y, x] - cube.clean[k, y, x]) < 10 * cube.err[k, y, x]


def test_residual_over_four_spaxels_of_one_plane_on_a_narrow_line_is_caught():
    # Seed 4's arc with 60 km/s lines: a residual on one plane of four spaxels
    # (1458, 594, 493 and 384 sigma) at a line's peak (S/N 8-33 there).
    # Its peak is flagged at once; the others' predictions hold the hit neighbours
    # in their bases, extrapolated far beyond their range over the window, and
    # were vague by 150-225 ERR. A refit on a faint spectrum may now leave out the
    # neighbours whose single fits extrapolate and side with the voxel.
    cube = benchmark_cube("arc", seed=4, line_sigma_kms=60.0)
    art = next(a for a in cube.artifacts if 1400 < a.peak_sigma < 1500)
    assert len(set(art.planes)) == 1 and len(set(zip(art.ys, art.xs, strict=True))) == 4
    result = clip_target(cube)
    voxels = art.planes, art.ys, art.xs
    assert result.flags[voxels].all()
    assert np.all(np.abs(result.sci[voxels] - cube.clean[voxels]) < 10 * cube.err[voxels])


def test_every_spaxel_of_a_residual_on_a_narrow_lines_peak_is_caught():
    # The same 426-sigma residual over three planes of four spaxels as above. Once
    # its peak is flagged, a hit neighbour of it (148 sigma at the line's peak)
    # has two more hit neighbours in its basis, which extrapolate; but the line
    # peaks on that plane in the other neighbours too, so only those whose own
    # peak there is at most twice the voxel's may side with it (one of them peaks
    # 103 ERR over its sides, the voxel 97).
    cube = benchmark_cube("arc", seed=5, line_sigma_kms=60.0)
    art = next(a for a in cube.artifacts if 400 < a.peak_sigma < 450)
    result = clip_target(cube)
    voxels = art.planes, art.ys, art.xs
    assert result.flags[voxels].all()
    assert np.all(np.abs(result.sci[voxels] - cube.clean[voxels]) < 10 * cube.err[voxels])


def test_tail_of_a_residual_over_several_spaxels_is_caught():
    # A 2518-sigma residual over three spaxels and two planes of a narrow line
    # (S/N 100 at its peak plane, 8-16 on the next). On the second plane the
    # spaxels' predictions lean on each other and follow the residual. Once the
    # first plane is flagged in this spaxel and a neighbour, the refit on the next
    # plane is taken although the first pass saw nothing there.
    cube = benchmark_cube("compact", seed=1, line_sigma_kms=45.0, noise=1.0, edge_noise=3.0)
    art = next(a for a in cube.artifacts if a.on_line and a.peak_sigma > 2000)
    assert len(set(art.planes)) == 2 and len(set(zip(art.ys, art.xs, strict=True))) == 3
    result = clip_target(cube)
    voxels = art.planes, art.ys, art.xs
    assert result.flags[voxels].all()
    assert np.all(np.abs(result.sci[voxels] - cube.clean[voxels]) < 12 * cube.err[voxels])
    on_signal = flags_on_signal(result, cube)
    k = art.planes.min()
    assert not on_signal[k - 2:k + 4].any()


def test_tail_next_to_a_strong_flag_in_the_same_spaxel_is_caught():
    # A 128-sigma residual over three planes of one spaxel of an arc line (S/N 88,
    # 51 and 16 there). Its core is flagged; the spaxel's fit for the next plane
    # holds the core's other tail in its window and follows it (45 sigma left). Fitted
    # with the planes next to the flags left out, the tail stands out.
    cube = benchmark_cube("arc", seed=3, peak_snr=450.0)
    art = next(a for a in cube.artifacts if a.on_line and 120 < a.peak_sigma < 135)
    assert len(set(art.planes)) == 3 and len(set(zip(art.ys, art.xs, strict=True))) == 1
    result = clip_target(cube)
    core, tail = (1, 2)
    for i in (core, tail):
        vox = art.planes[i], art.ys[i], art.xs[i]
        assert cube.model[vox] > 10 * cube.err[vox]
        assert result.flags[vox]
        assert abs(result.sci[vox] - cube.clean[vox]) < 5 * cube.err[vox]
    # A -2392 sigma residual over three planes and four spaxels: in its peak spaxel
    # the tails (-957 and -837 sigma) pull the screen's baseline below "bright", and
    # are checked all the same, next to their core. In another of its spaxels the
    # -311 sigma tail is fitted with too few planes left by the guard (the other
    # tail is flagged too), and its neighbours' tails are only flagged by the same
    # check: it is found by a fit without the guard in a second round. At least 95%
    # of every voxel of the residual is removed.
    big = next(a for a in cube.artifacts if a.peak_sigma < -2000)
    assert len(set(big.planes)) == 3 and len(set(zip(big.ys, big.xs, strict=True))) == 4
    voxels = big.planes, big.ys, big.xs
    injected = np.abs(cube.sci[voxels] - cube.clean[voxels])
    assert (injected > 300 * cube.err[voxels]).all()
    assert result.flags[voxels].all()
    assert np.all(np.abs(result.sci[voxels] - cube.clean[voxels]) < 0.05 * injected)


def test_faint_tail_beyond_nine_tenths_of_sigma_next_to_its_core_is_caught():
    # A 34-sigma residual over three planes and four spaxels of the seed-0 arc's
    # sky (S/N 0.3-0.4). In one spaxel its core (12.8 sigma injected) is flagged,
    # and the tail fit finds the 5.1-sigma tail before it at 4.7 sigma. Next to a strong
    # core of its own spaxel, on a faint spectrum, a tail is flagged beyond 0.9
    # sigma; with sigma itself as the bound it was left.
    cube = benchmark_cube("arc", seed=0)
    art = next(a for a in cube.artifacts if 33 < a.peak_sigma < 35)
    assert len(set(art.planes)) == 3 and len(set(zip(art.ys, art.xs, strict=True))) == 4
    result = clip_target(cube)
    tail = (13, 19, 26)
    voxels = set(zip(art.planes.tolist(), art.ys.tolist(), art.xs.tolist(), strict=True))
    assert tail in voxels and (14, 19, 26) in voxels and art.planes.min() == tail[0]
    assert 5 < (cube.sci[tail] - cube.clean[tail]) / cube.err[tail] < 5.2
    assert cube.model[tail] < cube.err[tail]
    assert result.flags[tail] and result.flags[14, 19, 26]
    assert abs(result.sci[tail] - cube.clean[tail]) < 2 * cube.err[tail]


def test_tail_on_a_line_keeps_the_full_bound(tmp_path):
    # The demo cube's 543-sigma hit on one plane of a spaxel of the arc line (S/N
    # 27 there) is flagged; the plane after it holds the line's real peak (S/N 51),
    # which the screen calls faint (the line is narrow: its values two and three
    # planes away, the screen's baseline, are below 10 ERR). The tail fit, without
    # the planes next to the hit, predicts that peak from the line's wings, 41 ERR
    # low at 4.5-5 sigma. Where the voxel or its prediction is bright the tail
    # bound stays at sigma, and it is left.
    # (run as `make demo` runs it: automatic layer map from the [O III] line)
    cube = make_cube("arc", seed=2024)
    path = tmp_path / "demo_s3d.fits"
    cube.writeto(path)
    result, _ = clean_file(path, tmp_path / "out_s3d.fits", method="robust", line=cube.line,
                           z=cube.z)
    hit, peak = (303, 22, 21), (304, 22, 21)
    assert (cube.sci[hit] - cube.clean[hit]) > 500 * cube.err[hit]
    assert cube.artifact_mask[hit] and not cube.artifact_mask[peak]
    assert cube.model[peak] > 50 * cube.err[peak]
    assert result.flags[hit]
    assert not result.flags[peak]


def test_tails_shared_by_neighbours_are_left_out_of_the_tail_fit():
    # A 304-sigma residual over three planes and three spaxels of the seed-0 arc's
    # line (S/N 50-130). In its peak spaxel the core is flagged, but the fits for its
    # 121- and 106-sigma tails had the residual's tails in two neighbours in their
    # basis and followed them. Those neighbours, flagged on the core's plane, are
    # left out of the tail fit, and both tails are flagged.
    cube = benchmark_cube("arc", seed=0)
    art = next(a for a in cube.artifacts if a.on_line and 300 < a.peak_sigma < 310)
    assert len(set(art.planes)) == 3 and len(set(zip(art.ys, art.xs, strict=True))) == 3
    result = clip_target(cube)
    core, y, x = _peak_voxel(art)
    for k in (core - 1, core, core + 1):
        vox = k, y, x
        injected = abs(cube.sci[vox] - cube.clean[vox])
        assert injected > 100 * cube.err[vox]
        assert result.flags[vox]
        assert abs(result.sci[vox] - cube.clean[vox]) < 0.15 * injected


def test_tail_of_a_residual_in_a_less_hit_spaxel_is_caught():
    # The same residual in its third spaxel (S/N 121 and 53 on its second and
    # third planes; 76 and 27 sigma injected there). Its second plane is flagged
    # at 7.5 sigma, short of a strong core, so its tails were not checked, and the
    # fit for the third plane, with the residual's other planes in its window,
    # followed it (28 ERR high). Where a neighbour holds the residual's strong part
    # on that plane (flagged beyond 2 sigma, same sign), it is checked as a tail
    # too, and flagged.
    cube = benchmark_cube("arc", seed=0)
    art = next(a for a in cube.artifacts if a.on_line and 300 < a.peak_sigma < 310)
    core, _, _ = _peak_voxel(art)
    injected = np.abs(cube.sci - cube.clean) / cube.err
    third = [(yy, xx) for yy, xx in set(zip(art.ys.tolist(), art.xs.tolist(), strict=True))
             if injected[core, yy, xx] < 80]
    assert len(third) == 1
    vox = (core + 1, *third[0])
    assert 25 < injected[vox] < 28 and cube.model[vox] > 50 * cube.err[vox]
    result = clip_target(cube)
    assert result.flags[(core, *third[0])] and result.flags[vox]
    assert abs(result.sci[vox] - cube.clean[vox]) < 5 * cube.err[vox]


def test_tail_of_a_residual_on_a_faint_continuum_is_caught():
    # A 124-sigma residual over three planes and three spaxels of a continuum at
    # S/N 2-3, in seed 1's noisier field. One spaxel's first plane (12 sigma) sits
    # next to its 16-sigma core; its five-term fit, with a neighbour flagged on the
    # plane left out, extrapolates (3.5 ERR uncertain) and follows the residual. The
    # tail check of a strong core on any spectrum, with the two-term fit on the
    # summed neighbours where that is the more precise, finds it.
    cube = benchmark_cube("continuum", seed=1, line_sigma_kms=45.0, noise=1.0,
                          edge_noise=3.0)
    art = next(a for a in cube.artifacts if 120 < a.peak_sigma < 130)
    assert len(set(art.planes)) == 3 and len(set(zip(art.ys, art.xs, strict=True))) == 3
    result = clip_target(cube)
    voxels = art.planes, art.ys, art.xs
    strong = np.abs(cube.sci[voxels] - cube.clean[voxels]) > 10 * cube.err[voxels]
    assert strong.sum() >= 6
    assert result.flags[voxels][strong].all()
    assert not result.flags[~cube.artifact_mask].any()


def test_replacement_between_its_neighbouring_planes_stays_near_them():
    # Three flags of one spectrum: a value between its neighbours in wavelength
    # whose fit went far off is clipped to that range widened by 3 ERR, either
    # way; a spike is left to its fit (its neighbours may be a residual's tails).
    y = np.array([[0.0, 0.0, 0.0], [100.0, 50.0, 5.0], [10.0, 40.0, 100.0],
                  [1.0, 0.0, 5.0], [0.0, 0.0, 0.0]])
    e = np.ones_like(y)
    flags = np.zeros(y.shape, bool)
    flags[2] = True
    fk, fs = np.nonzero(flags)
    value = np.full(y.shape, np.nan)
    value[2] = [-80.0, 95.0, 30.0]
    _bound_replacements(y, e, np.ones(y.shape, bool), flags, fk, fs, value)
    np.testing.assert_allclose(value[2], [-2.0, 53.0, 30.0])


def test_replacement_guard_stops_at_runs_of_three_flags():
    # The planes next to flags are left out of a bright voxel's replacement fit
    # (they may be a residual's unflagged tails), but not beyond a run of three
    # flagged planes: a residual spans at most three, and on a line the extra
    # planes lost make the fit extrapolate its peak.
    flags = np.zeros((12, 1), bool)
    flags[[2, 3, 4, 8], 0] = True
    want = [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0]
    fk, fs = np.nonzero(flags)
    np.testing.assert_array_equal(_guard_short_runs(flags, fk, fs)[:, 0], want)
    # runs at the cube's ends, and a run of two (grown on both sides)
    flags = np.zeros((9, 1), bool)
    flags[[0, 1, 2, 5, 6], 0] = True
    want = [1, 1, 1, 0, 1, 1, 1, 1, 0]
    fk, fs = np.nonzero(flags)
    np.testing.assert_array_equal(_guard_short_runs(flags, fk, fs)[:, 0], want)


def test_narrow_lines_wing_keeps_its_spaxels_line_flux():
    # Seed 1's compact cube, 45 km/s lines with a strong velocity gradient. A voxel
    # on the red wing (S/N 9, between 115 and 4 ERR on the planes either side) was
    # once flagged as a misfit of the line's shape and replaced by a fit that
    # extrapolated 106 ERR below the truth (its spaxel's line flux 29 sigma low);
    # replacements between their planes' values are now bounded (see the test
    # above), and since the neighbours' slope counts against "quiet" it is no
    # longer flagged at all. Every spaxel's line flux stays within 5 sigma of the
    # artifact-free cube, and no flag without an artifact is replaced far off.
    cube = benchmark_cube("compact", seed=1, line_sigma_kms=45.0, noise=1.0, edge_noise=3.0)
    result = clip_target(cube)
    bad = result.flags & ~cube.artifact_mask
    with np.errstate(invalid="ignore"):
        error = np.abs(result.sci - cube.clean)[bad] / cube.err[bad]
    assert not (error > 10).any()
    k = _line_peak(cube)[0]
    line = slice(k - 8, k + 9)
    change = (result.sci[line] - cube.clean[line]).sum(axis=0)[cube.footprint]
    noise = np.sqrt((cube.err[line].astype(float) ** 2).sum(axis=0))[cube.footprint]
    assert np.abs(change / noise).max() < 5


def test_replacements_on_a_faint_line_are_not_biased_low():
    """Flagged voxels of a faint line (peak S/N ~4) get values centred on the truth.

    A fit on noisy neighbour spectra dilutes the line it predicts: the five-term
    prediction alone comes out about 1.5 ERR low here on average, a plain two-term
    fit on the neighbour sum 0.7 ERR low, and one whose slope was corrected only
    where the sum's reliability exceeds one half 0.37 ERR low (against the
    noise-free line, over these 16 cubes). Filling in what dilution took with the
    prior that a spaxel follows the mean of its neighbours centres them.
    """
    errors = []
    for seed in range(16):
        cube = make_cube("faint", seed=seed, n_artifacts=5, on_line_fraction=1.0,
                         negative_fraction=0.0, separate=True, amp_range=(10.0, 300.0),
                         **SMALL)
        lm = np.where(cube.footprint, 0, -1).astype(np.int16)
        result = clip_cube(cube.sci, cube.err, lm)
        on_line = (cube.model > cube.err) & cube.artifact_mask & result.flags
        errors.append(((result.sci - cube.model) / cube.err)[on_line])
    errors = np.concatenate(errors)
    assert errors.size > 100
    assert abs(errors.mean()) < 0.2
    assert np.sqrt((errors ** 2).mean()) < 1.1


def test_noise_rising_to_the_field_edge():
    """ERR normalisation: weak artifacts in quiet spaxels caught, noisy edges left alone."""
    rng = np.random.default_rng(3)
    nw, ny, nx = 120, 25, 25
    yy, xx = np.mgrid[0:ny, 0:nx]
    edge = np.minimum.reduce([yy, xx, ny - 1 - yy, nx - 1 - xx])
    err2d = 1.0 + 2.0 * np.exp(-edge / 1.5)  # 3x the noise at the edge
    err = np.broadcast_to(err2d, (nw, ny, nx)).astype(np.float32).copy()
    sci = (rng.normal(size=err.shape) * err).astype(np.float32)
    lm = np.zeros((ny, nx), np.int16)
    quiet = [(30, 12, 12), (70, 10, 15), (95, 14, 9)]
    for k, y, x in quiet:
        sci[k, y, x] += 7.0 * err[k, y, x]
    robust = clip_cube(sci, err, lm, method="robust")
    paper = clip_cube(sci, err, lm, method="paper")
    for vox in quiet:
        assert robust.flags[vox]
    assert robust.n_flagged <= len(quiet) + 1
    # one std for the whole plane: the quiet centre's 7-sigma bumps hide in edge noise
    assert sum(bool(paper.flags[v]) for v in quiet) < len(quiet)


@pytest.mark.parametrize("replace", ["model", "median", "interp", "nan"])
def test_block_wise_equals_whole_cube(arc, replace):
    k, _, _ = _line_peak(arc)
    lm = _layer_map(arc, k)
    whole = clip_cube(arc.sci, arc.err, lm, replace=replace, block_planes=10_000)
    blocks = clip_cube(arc.sci, arc.err, lm, replace=replace, block_planes=7)
    assert np.array_equal(whole.flags, blocks.flags)
    assert np.array_equal(whole.sci, blocks.sci, equal_nan=True)
    assert np.array_equal(whole.err, blocks.err, equal_nan=True)


def test_halo_contract_for_out_of_core_blocks(arc):
    """A block padded by halo_planes and trimmed equals the same planes of the whole cube."""
    k, _, _ = _line_peak(arc)
    lm = _layer_map(arc, k)
    halo = halo_planes("robust")
    assert isinstance(halo, int) and 0 < halo < 80
    assert halo_planes("robust", replace="interp", interp_gap=5) == halo + 5
    assert halo_planes("paper") == 0
    whole = clip_cube(arc.sci, arc.err, lm)
    nw = arc.sci.shape[0]
    for start, stop in ((0, 9), (40, 47), (nw - 6, nw)):
        lo, hi = max(0, start - halo), min(nw, stop + halo)
        part = clip_cube(arc.sci[lo:hi], arc.err[lo:hi], lm)
        keep = slice(start - lo, stop - lo)
        assert np.array_equal(part.flags[keep], whole.flags[start:stop])
        assert np.array_equal(part.sci[keep], whole.sci[start:stop], equal_nan=True)


def test_replace_modes(arc):
    k, _, _ = _line_peak(arc)
    lm = _layer_map(arc, k)
    res = {r: clip_cube(arc.sci, arc.err, lm, replace=r) for r in
           ("model", "median", "interp", "nan")}
    flags = res["model"].flags
    assert flags.any()
    for r in res.values():
        assert np.array_equal(r.flags, flags)
        assert np.array_equal(r.sci[~flags], arc.sci[~flags], equal_nan=True)
        assert np.array_equal(r.err[~flags], arc.err[~flags], equal_nan=True)
    assert np.isnan(res["nan"].sci[flags]).all() and np.isnan(res["nan"].err[flags]).all()
    for name in ("model", "median", "interp"):
        assert np.isfinite(res[name].sci[flags]).all()
        assert (res[name].err[flags] > 0).all()
    # median: the group's median of usable, unflagged voxels in that plane
    kk, yy, xx = (int(v[0]) for v in np.nonzero(flags))
    group = (lm == lm[yy, xx])
    vals = arc.sci[kk][group & ~flags[kk]]
    assert res["median"].sci[kk, yy, xx] == pytest.approx(np.median(vals), rel=1e-5)
    assert res["median"].params["replace"] == "median"


def test_interp_is_linear_along_wavelength_with_propagated_err():
    rng = np.random.default_rng(8)
    nw, ny, nx = 60, 9, 9
    err = np.full((nw, ny, nx), 0.5, np.float32)
    err[31] = 0.8
    ramp = np.linspace(1.0, 4.0, nw)[:, None, None]
    sci = (ramp + 0.5 * rng.normal(size=(nw, ny, nx))).astype(np.float32)
    sci[30, 4, 4] += 200.0
    lm = np.zeros((ny, nx), np.int16)
    r = clip_cube(sci, err, lm, replace="interp")
    assert r.flags[30, 4, 4] and r.n_flagged == 1
    expected = 0.5 * (sci[29, 4, 4] + sci[31, 4, 4])
    assert r.sci[30, 4, 4] == pytest.approx(expected, rel=1e-6)
    assert r.err[30, 4, 4] == pytest.approx(np.sqrt(0.25 * 0.25 + 0.25 * 0.64), rel=1e-6)


def test_excluded_nan_and_outside_layer_map_untouched(arc):
    k, _, _ = _line_peak(arc)
    lm = _layer_map(arc, k)
    sci = arc.sci.copy()
    big = [a for a in arc.artifacts if abs(a.peak_sigma) > 50][:3]
    assert len(big) == 3
    vox = [(a.planes[0], a.ys[0], a.xs[0]) for a in big]
    excluded = np.zeros(sci.shape, bool)
    excluded[vox[0]] = True  # DO_NOT_USE on an artifact voxel
    sci[vox[1]] = np.nan  # a NaN
    lm = lm.copy()
    lm[vox[2][1], vox[2][2]] = -1  # a spaxel left out of the map
    r = clip_cube(sci, arc.err, lm, excluded=excluded)
    assert not r.flags[vox[0]] and r.sci[vox[0]] == sci[vox[0]]
    assert not r.flags[vox[1]] and np.isnan(r.sci[vox[1]])
    assert not r.flags[:, vox[2][1], vox[2][2]].any()
    assert np.array_equal(r.sci[:, lm < 0], sci[:, lm < 0], equal_nan=True)
    assert not (r.flags & (excluded | np.isnan(sci))).any()


def test_options_validated(arc):
    lm = np.where(arc.footprint, 0, -1)
    with pytest.raises(OptionError, match="--replace 'bogus'"):
        clip_cube(arc.sci, arc.err, lm, replace="bogus")
    with pytest.raises(OptionError, match="--replace model needs --method robust"):
        clip_cube(arc.sci, arc.err, lm, method="paper", replace="model")
    with pytest.raises(OptionError, match="--grow"):
        clip_cube(arc.sci, arc.err, lm, grow=-1)
    r = clip_cube(arc.sci, arc.err, lm, grow=0)
    assert r.method == "robust" and r.params["grow"] == 0


def test_residual_across_planes_and_spaxels_in_sky_is_removed():
    """A residual shared by three spaxels and three planes: all of it flagged, sky restored."""
    rng = np.random.default_rng(21)
    nw, ny, nx = 80, 15, 15
    err = np.full((nw, ny, nx), 0.5, np.float32)
    clean = (rng.normal(size=err.shape) * err).astype(np.float32)
    sci = clean.copy()
    for (y, x), w in (((7, 7), 1.0), ((7, 8), 0.5), ((8, 7), 0.4)):
        for k, pw in zip((40, 41, 42), (0.4, 1.0, 0.35), strict=True):
            sci[k, y, x] += 200.0 * err[k, y, x] * w * pw
    r = clip_cube(sci, err, np.zeros((ny, nx), np.int16))
    hit = np.abs(sci - clean) > 10 * err
    assert r.flags[hit].all()
    assert np.abs(r.sci - clean)[hit].max() < 5 * 0.5
    assert (r.flags & ~(np.abs(sci - clean) > 0)).sum() <= 2


def test_tail_between_two_residuals_in_one_spaxel_is_caught(shared_data):
    # Two residuals six planes apart in one spaxel of the MUSE UDF cube, the second
    # shared with a diagonal neighbour (drawn so in benchmarks/quality_real.py).
    # Their pull on the screen's baseline makes the clean planes around and
    # between them look outlying; with those and the flags out of its window, the
    # 12.9-sigma tail of the first had too few planes left for any fit and was left.
    cube = read_cube(shared_data / "muse_udf_subcube.fits")
    sci = np.where(cube.excluded, np.nan, cube.sci).astype(np.float32)
    err = np.where(cube.excluded, np.nan, cube.err).astype(np.float32)
    hit_sci = sci.copy()
    for k0, amp, spaxels in ((89, 36.8, {(5, 21): 1.0}), (95, 43.7, {(4, 20): 1.0, (5, 21): 0.57})):
        for k, pw in zip((k0, k0 + 1, k0 + 2), (0.4, 1.0, 0.35), strict=True):
            for (y, x), w in spaxels.items():
                hit_sci[k, y, x] += amp * pw * w * err[k, y, x]
    layer_map = np.where(cube.excluded.all(axis=0), -1, 0).astype(np.int16)
    r = clip_cube(hit_sci, err, layer_map, excluded=cube.excluded)
    hit = np.abs(hit_sci - sci) > 10 * err
    assert hit.sum() == 7 and hit[91, 5, 21]
    assert r.flags[hit].all()
    assert (np.abs(r.sci - sci) / err)[hit].max() < 2
    assert (r.flags & ~(hit_sci != sci)).sum() <= 2


def test_masked_median_matches_numpy(rng):
    values = rng.normal(size=(8, 30))
    valid = rng.random((8, 30)) > 0.3
    valid[:, 0] = False
    got = masked_median(values, valid)
    for j in range(30):
        if valid[:, j].any():
            assert got[j] == pytest.approx(np.median(values[valid[:, j], j]))
        else:
            assert np.isnan(got[j])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ">f4"])
def test_compact_planes_matches_numpy(rng, dtype):
    planes = rng.normal(size=(6, 40)).astype(dtype)
    planes[2, 5] = np.nan
    planes[3, 7] = np.inf
    index = np.array([0, 5, 7, 8, 39])
    got = compact_planes(planes[1:5], index)
    assert got.dtype == np.float64 and got.shape == (4, 5)
    np.testing.assert_array_equal(got, np.take(planes[1:5], index, axis=1).astype(float))


def test_artifact_dataclass_still_used():
    # make_cube's signature keeps working for the demo and other tests
    cube = make_cube("faint", shape=(40, 15, 15), fov_size=10, seed=1, n_artifacts=3,
                     wave_range=(1.16, 1.17), separate=True)
    assert len(cube.artifacts) == 3 and isinstance(cube.artifacts[0], Artifact)


def test_err_factor_scales_err_everywhere():
    # ERR halved and err_factor 2 (exact in floating point) give what the right ERR
    # gives: flags, replacement values and their ERR
    cube = make_cube("arc", seed=5, n_artifacts=25, separate=True, **SMALL)
    lm = target_layer_map(cube)
    right = clip_cube(cube.sci, cube.err, lm, err_factor=1.0)
    halved = clip_cube(cube.sci, cube.err * np.float32(0.5), lm, err_factor=2.0)
    assert right.n_flagged > 10
    np.testing.assert_array_equal(halved.flags, right.flags)
    np.testing.assert_array_equal(halved.sci, right.sci)
    np.testing.assert_array_equal(halved.err[right.flags], right.err[right.flags])
    assert halved.params["err_factor"] == 2.0


def test_err_factor_is_the_same_whole_and_in_blocks():
    # measured from the block's arrays when the cube is one block, else read from
    # the cube first: the same planes and spaxels, so the same factor and flags
    cube = make_cube("arc", seed=5, n_artifacts=25, separate=True, err_scale=0.6, **SMALL)
    lm = target_layer_map(cube)
    whole = clip_cube(cube.sci, cube.err, lm)
    blocks = clip_cube(cube.sci, cube.err, lm, block_planes=50)
    assert whole.params["err_factor"] == pytest.approx(1 / 0.6, rel=0.05)
    assert blocks.params["err_factor"] == whole.params["err_factor"]
    np.testing.assert_array_equal(blocks.flags, whole.flags)
    np.testing.assert_array_equal(blocks.sci, whole.sci)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_err_factor_is_measured_where_err_understates_the_noise(seed):
    right = benchmark_cube("arc", seed=seed)
    under = benchmark_cube("arc", seed=seed, err_scale=0.7)
    assert clip_target(right).params["err_factor"] == 1.0
    assert clip_target(under).params["err_factor"] == pytest.approx(1 / 0.7, rel=0.04)


def test_err_that_understates_the_noise_does_not_hide_residuals():
    # with ERR at 0.7 times the noise, every fit's misfit looks like model error and
    # widens the prediction on top of the per-plane scale: strong residuals were
    # missed on these cubes (benchmarks/quality_unseen.py, "ERR x0.7" rows)
    missed = {None: 0, 1.0: 0}
    for kind, seed in (("continuum", 5), ("continuum", 6), ("ringing", 5)):
        cube = benchmark_cube(kind, seed=seed, err_scale=0.7)
        for factor in missed:
            flags = clip_target(cube, err_factor=factor).flags
            missed[factor] += sum(
                abs(a.peak_sigma) > 10 and not flags[_peak_voxel(a)] for a in cube.artifacts)
    assert missed[1.0] >= 3
    assert missed[None] == 0


@pytest.mark.parametrize("factor", [0.0, -1.0, np.nan, np.inf])
def test_bad_err_factor_is_refused(factor):
    cube = make_cube("arc", seed=5, n_artifacts=0, **SMALL)
    with pytest.raises(OptionError, match="--err-factor"):
        clip_cube(cube.sci, cube.err, target_layer_map(cube), err_factor=factor)


def test_nan_holes_in_the_neighbours_do_not_flag_real_signal():
    # 1% of the voxels without data: a neighbour with a hole in a fit window used to
    # be left out of the basis, and on the compact cores the fits without it
    # flagged real signal (5 and 7 voxels on these cubes); now it stays in, and the
    # fit drops that plane
    on_signal = 0
    for seed in (4, 5):
        cube = benchmark_cube("compact", seed=seed, holes=0.01)
        on_signal += int(flags_on_signal(clip_target(cube), cube).sum())
    assert on_signal <= 3


def test_point_source_wing_is_not_flagged_on_its_neighbours_noise():
    # Seed 5's ringing point source (quality_unseen.py): a voxel at S/N 58 on the
    # source's wing, nothing injected in it or its neighbours (a 2960-sigma residual
    # lies two spaxels away, diagonally). Its fit meets the window
    # with chi2 0.5 and stated 0.67 ERR, but it weighs the west neighbour by -1.17
    # and the others by up to 0.55: their noise on its plane alone is 1.4 ERR. The
    # noisy neighbours put the prediction 5 ERR high (on the noise-free cube it is
    # exact), z was -5.6 and the voxel was flagged. On signal a prediction is now
    # never stated more precise than the neighbour values it combines.
    cube = benchmark_cube("ringing", seed=5)
    k, y, x = 441, 22, 21
    assert not cube.artifact_mask[k - 7:k + 8, y - 1:y + 2, x - 1:x + 2].any()
    assert cube.model[k, y, x] > 50 * cube.err[k, y, x]
    value, sd = _first_prediction(cube, k, y, x)
    assert value - cube.model[k, y, x] > 4 * cube.err[k, y, x]
    assert sd > 1.3 * cube.err[k, y, x]
    z = (cube.sci[k, y, x] - value) / np.hypot(cube.err[k, y, x], sd)
    assert -5 < z < -3
    assert not clip_target(cube).flags[k, y, x]
