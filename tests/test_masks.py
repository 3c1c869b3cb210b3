"""Target masks and S/N layers: bounds, automatic layers, synthetic targets, regions, edits."""

import itertools
import warnings

import numpy as np
import pytest

from layerclip.errors import EmptyTargetError, InputFileError, LayerclipWarning, OptionError
from layerclip.layers import STATISTICS, max_single_outlier_sigma, min_clippable_size
from layerclip.masks import (
    MaskSpec,
    build_mask,
    choose_edges,
    continuum_snr_map,
    field_edge,
    lift_edges,
    line_snr_map,
    regions_mask,
)
from layerclip.simulate import make_cube
from layerclip.snr import collapsed_snr

# Small cubes: 120 planes around [O III] 5008 at z=1.3293 (1.1666 um).
KW = {"shape": (120, 43, 43), "wave_range": (1.15, 1.18), "n_artifacts": 30}


def _excluded(sc):
    return ~np.isfinite(sc.sci) | ((sc.dq & 1) != 0)


def _mask(sc, **spec):
    exc = _excluded(sc)
    snrmap = line_snr_map(sc.sci, sc.err, sc.wavelength, lines=[sc.line], z=sc.z,
                          excluded=exc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerclipWarning)
        return build_mask(snrmap, MaskSpec(lines=[sc.line], z=sc.z, **spec),
                          no_data=exc.all(axis=0))


# --- the n/sqrt(n-1) bound ---------------------------------------------------------------

def _brute_ratio(n, statistic):
    """Distance of one huge outlier among n-1 zeros, in units of the clip's scale."""
    values = np.zeros(n)
    values[0] = 1e6
    centre = np.mean(values) if statistic == "std-mean" else np.median(values)
    scale = np.std(values, ddof=1 if statistic == "std-ddof1" else 0)
    return abs(values[0] - centre) / scale


@pytest.mark.parametrize("statistic", ["std", "std-mean", "std-ddof1"])
def test_bound_matches_brute_force(statistic):
    for n in (3, 5, 10, 24, 25, 60):
        assert max_single_outlier_sigma(n, statistic) == pytest.approx(
            _brute_ratio(n, statistic), rel=1e-6)


@pytest.mark.parametrize("statistic", STATISTICS)
@pytest.mark.parametrize("sigma", [2.0, 3.0, 4.0, 5.0, 7.5])
def test_min_clippable_size_is_smallest(statistic, sigma):
    n = min_clippable_size(sigma, statistic)
    assert max_single_outlier_sigma(n, statistic) > sigma
    if n > 2:
        assert max_single_outlier_sigma(n - 1, statistic) <= sigma or statistic == "mad"


def test_paper_bound_is_24_at_5_sigma():
    assert min_clippable_size(5.0) == 24
    assert min_clippable_size(5.0, "mad") == 3


# --- automatic layers ----------------------------------------------------------------------

def _cost(values, starts):
    bounds = [*starts, values.size]
    return sum(np.log(values[b - 1] / values[a]) ** 2 for a, b in itertools.pairwise(bounds))


def test_choose_edges_is_optimal_against_enumeration(rng):
    values = np.sort(np.exp(rng.uniform(0, 4, 30)))
    choice = choose_edges(values, n_layers=3, min_size=5, balance=0.1)
    starts = [int(np.searchsorted(values, e)) for e in choice.edges[:-1]]
    best = min(_cost(values, [0, a, b]) for a in range(5, 26) for b in range(a + 5, 26))
    assert _cost(values, starts) == pytest.approx(best)
    counts = np.histogram(values, choice.edges)[0]
    assert counts.sum() == 30 and counts.min() >= 5


def test_small_target_warns_with_numbers():
    with pytest.warns(LayerclipWarning, match=r"10 target spaxels allow only 1 layer"):
        with pytest.warns(LayerclipWarning, match=r"at most 3\.33 sigma"):
            choice = choose_edges(np.linspace(3, 30, 10))
    assert choice.n_layers == 1


def test_auto_asks_four_layers_for_wide_range():
    wide = choose_edges(np.geomspace(3, 3000, 400))
    narrow = choose_edges(np.geomspace(3, 30, 400))
    assert (wide.n_layers, narrow.n_layers) == (4, 3)
    assert np.all(np.histogram(np.geomspace(3, 3000, 400), wide.edges)[0] >= 24)


# --- synthetic targets ---------------------------------------------------------------------

@pytest.mark.parametrize("kind, peak, seed", [("arc", None, 3), ("compact", None, 3),
                                              ("faint", 12.0, 3)])
def test_automatic_mask_recovers_synthetic_target(kind, peak, seed):
    """Tolerance: >= 95% of spaxels with true S/N >= 5 are target; <= 1% of the target
    has true S/N < 1.5 (true S/N: the noise-free model over the same window)."""
    sc = make_cube(kind, seed=seed, peak_snr=peak, **KW)
    res = _mask(sc, rank="robust")
    true, _ = collapsed_snr(sc.model, sc.err, res.snrmap.planes)
    target = res.layer_map >= 1
    truth = (true >= 5) & sc.footprint
    assert (target & truth).sum() >= 0.95 * truth.sum()
    assert (target & (true < 1.5)).sum() <= 0.01 * target.sum()
    assert (res.layer_map[~sc.footprint] == -1).all()
    counts = np.bincount(res.layer_map[target])[1:]
    assert counts.min() >= min_clippable_size(5.0)
    assert 3 <= res.choice.n_layers <= 4


def test_segmentation_separates_bright_neighbour():
    sc = make_cube("faint", seed=3, peak_snr=12.0, neighbour={"peak_snr": 60.0}, **KW)
    planes = _mask(sc).snrmap.planes
    target_true, _ = collapsed_snr(sc.model - np.nan_to_num(sc.neighbour_model), sc.err,
                                   planes)
    nb_true, _ = collapsed_snr(sc.neighbour_model, sc.err, planes)
    neighbour = (nb_true > 3) & (nb_true > target_true)
    plain = _mask(sc).layer_map >= 1
    # the neighbour's centre: (dy, dx) = (8, 9) from the field centre (21, 21)
    seg = _mask(sc, segmentation=True, reject_at=[[30, 29]]).layer_map >= 1
    assert (plain & neighbour).sum() >= 0.9 * neighbour.sum()  # threshold alone keeps it
    assert (seg & neighbour).sum() == 0
    good = (target_true >= 5) & sc.footprint
    assert (seg & good).sum() >= 0.95 * (plain & good).sum()
    kept = _mask(sc, segmentation=True, keep_at=[[19, 21]]).layer_map >= 1
    assert (kept & neighbour).sum() == 0
    with pytest.raises(OptionError, match="reject_at needs segmentation"):
        _mask(sc, reject_at=[[30, 29]])


def test_keep_at_keeps_only_touching_component():
    sc = make_cube("compact", seed=1, **KW)
    res = _mask(sc, keep_at=[[20, 22]], min_island=1)
    from scipy import ndimage

    labels, n = ndimage.label(res.layer_map >= 1, structure=np.ones((3, 3)))
    assert n == 1 and labels[22, 20] == 1


def test_robust_rank_demotes_injected_artifact():
    sc = make_cube("arc", seed=5, n_artifacts=0, shape=(120, 43, 43),
                   wave_range=(1.15, 1.18))
    base = _mask(sc, rank="robust")
    assert not base.ranked_by_neighbours.any()
    # A 2-plane residual on the line in one L1 spaxel inside the target.
    ys, xs = np.nonzero(base.layer_map == 1)
    pick = np.argmax([((y - 21) ** 2 + (x - 21) ** 2) < 400 and
                      (base.layer_map[y - 1:y + 2, x - 1:x + 2] >= 1).all()
                      for y, x in zip(ys, xs, strict=True)])
    y, x = ys[pick], xs[pick]
    p = base.snrmap.planes[len(base.snrmap.planes) // 2]
    sc.sci[p:p + 2, y, x] += 60 * sc.err[p:p + 2, y, x]
    plain = _mask(sc, rank="snr")
    robust = _mask(sc, rank="robust")
    assert plain.layer_map[y, x] > 1  # the artifact lifts it without the robust rank
    assert robust.ranked_by_neighbours[y, x]
    assert robust.layer_map[y, x] == 1
    demoted = _mask(sc, rank="snr", edits=[{"op": "demote_artifacts"}])
    assert demoted.layer_map[y, x] < plain.layer_map[y, x]
    assert demoted.records[0].n_changed >= 1


def test_continuum_and_multi_line_maps():
    sc = make_cube("continuum", seed=2, peak_snr=6.0, **KW)
    m = continuum_snr_map(sc.sci, sc.err, sc.wavelength, z=1.3293, excluded=_excluded(sc))
    assert m.kind == "continuum" and 0 < m.planes.size < 120
    assert np.nanmax(m.snr) > 20
    line = make_cube("arc", seed=2, **KW)
    exc = _excluded(line)
    one = line_snr_map(line.sci, line.err, line.wavelength, lines=["[O III]5008"], z=line.z,
                       excluded=exc)
    both = line_snr_map(line.sci, line.err, line.wavelength,
                        lines=["[O III]5008", "[O III]4960"], z=line.z, excluded=exc,
                        combine="max")
    assert np.nanmin(both.snr - one.snr) >= -1e-9 and both.planes.size > one.planes.size
    with pytest.raises(EmptyTargetError, match="no spaxel has S/N >= 1e"):
        build_mask(one, MaskSpec(lines=["[O III]5008"], z=line.z, threshold=1e9))


def test_vorbin_layers_follow_bins():
    sc = make_cube("arc", seed=4, **KW)
    res = _mask(sc, rule="vorbin", vorbin_target_sn=60.0, rank="snr")
    from layerclip.masks import voronoi_snr

    _, bins = voronoi_snr(res.snrmap.signal, res.snrmap.noise, res.target, target_sn=60.0)
    for b in np.unique(bins[bins >= 0]):
        assert np.unique(res.layer_map[bins == b]).size == 1


# --- edits ---------------------------------------------------------------------------------

def test_lift_edges_moves_expected_spaxels():
    no_data = np.ones((12, 12), dtype=bool)
    no_data[2:10, 2:10] = False
    lm = np.where(no_data, -1, 0).astype(np.int16)
    lm[3:9, 3:9] = 2
    lm[4:8, 4:8] = 3
    lm[2, 4:8] = 1        # target edge row at the field boundary, low S/N
    lm[2:4, 8] = 1
    edge = field_edge(no_data, width=1.0)
    new, rec = lift_edges(lm, edge)
    expected = lm.copy()
    interior = (lm != -1) & ~edge
    for y, x in zip(*np.nonzero(edge & (lm >= 1)), strict=True):  # plain cross-check
        iy, ix = np.nonzero(interior)
        d = np.hypot(iy - y, ix - x)
        j = np.flatnonzero(d == d.min())
        donor = lm[iy[j], ix[j]].max() if d.min() <= 3 else 0
        assert donor == lm[iy[j], ix[j]].min()  # no ties with different layers here
        expected[y, x] = max(lm[y, x], donor)
    np.testing.assert_array_equal(new, expected)
    assert rec.n_changed == int((expected != lm).sum()) > 0
    assert (new[lm == 0] == 0).all()  # sky stays sky unless include_sky


def test_move_edit_and_bad_edits():
    sc = make_cube("arc", seed=3, **KW)
    res = _mask(sc, edits=[{"op": "move", "spaxels": [[20, 24], [21, 24]], "to_layer": 0}])
    assert (res.layer_map[24, 20:22] == 0).all()
    assert res.records[0].op == "move"
    with pytest.raises(OptionError, match="unknown key"):
        MaskSpec(lines=["Ha"], z=1, edits=[{"op": "move", "spaxel": [[1, 1]]}]).check()
    with pytest.raises(OptionError, match="op 'shift'"):
        MaskSpec(lines=["Ha"], z=1, edits=[{"op": "shift"}]).check()
    with pytest.raises(OptionError, match="outside the 43 x 43"):
        _mask(sc, edits=[{"op": "move", "spaxels": [[50, 1]], "to_layer": 0}])


# --- regions -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def arc_file(tmp_path_factory):
    sc = make_cube("arc", seed=3, **KW)
    path = tmp_path_factory.mktemp("regions") / "arc_s3d.fits"
    sc.writeto(path)
    return sc, path


def _circle(shape, x0, y0, r):
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    return (x - x0) ** 2 + (y - y0) ** 2 < r ** 2


def test_pixel_region_removes_exactly_inside(arc_file, tmp_path):
    from layerclip.io import read_cube
    from layerclip.masks import mask_cube

    sc, path = arc_file
    cube = read_cube(path)
    reg = tmp_path / "cut.reg"
    # DS9 image coordinates are 1-based: centre (21, 25) is zero-based (20, 24).
    reg.write_text("# Region file format: DS9 version 4.1\nimage\ncircle(21,25,3.2)\n"
                   "-box(21,25,1,1,0)\n")
    inside = _circle((43, 43), 20, 24, 3.2)
    inside[24, 20] = False  # the exclude box carves out the centre spaxel
    np.testing.assert_array_equal(regions_mask(reg, (43, 43)), inside)
    base = mask_cube(cube, MaskSpec(lines=["[O III]5008"], z=sc.z))
    cut = mask_cube(cube, MaskSpec(lines=["[O III]5008"], z=sc.z, remove_regions=[reg]))
    np.testing.assert_array_equal(cut.target, base.target & ~inside)


def test_sky_region_uses_wcs(arc_file, tmp_path):
    from layerclip.io import read_cube

    sc, path = arc_file
    cube = read_cube(path)
    wcs = cube.celestial_wcs
    sky = wcs.pixel_to_world(25, 18)
    reg = tmp_path / "sky.reg"
    reg.write_text(f"icrs\ncircle({sky.ra.deg:.8f},{sky.dec.deg:.8f},0.35\")\n")
    np.testing.assert_array_equal(regions_mask(reg, (43, 43), wcs=wcs),
                                  _circle((43, 43), 25, 18, 3.5))
    crtf = tmp_path / "sky.crtf"
    crtf.write_text(f"#CRTFv0\ncircle [[{sky.ra.deg:.8f}deg, {sky.dec.deg:.8f}deg], "
                    "0.35arcsec], coord=ICRS\n")
    np.testing.assert_array_equal(regions_mask(crtf, (43, 43), wcs=wcs),
                                  _circle((43, 43), 25, 18, 3.5))
    with pytest.raises(OptionError, match="sky regions .* no celestial WCS"):
        regions_mask(reg, (43, 43), wcs=None)


def test_bad_region_files(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        regions_mask(tmp_path / "missing.reg", (5, 5))
    bad = tmp_path / "bad.reg"
    bad.write_text("image\nblob(1,2,3)\n")
    with pytest.raises(InputFileError, match="not a readable DS9/CRTF region file"):
        regions_mask(bad, (5, 5))
    off = tmp_path / "off.reg"
    off.write_text("image\ncircle(100,100,2)\n")
    with pytest.warns(LayerclipWarning, match="no spaxel centre"):
        assert not regions_mask(off, (5, 5)).any()
