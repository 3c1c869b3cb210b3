"""Paper mode against the independent slice-by-slice yardstick (layerclip.reference)."""

import numpy as np
import pytest
from astropy.stats import sigma_clip

from layerclip import clip_cube
from layerclip.errors import CubeFormatError, LayerMapError, OptionError
from layerclip.reference import paper_loop


def _cube(rng, dtype, shape=(120, 24, 26)):
    nw, ny, nx = shape
    sci = rng.normal(0.0, 1.0, shape)
    err = np.abs(rng.normal(1.0, 0.1, shape))
    layer_map = np.zeros((ny, nx), dtype=int)
    layer_map[6:18, 6:20] = 1
    layer_map[8:16, 9:17] = 2
    layer_map[10:14, 11:15] = 3
    layer_map[12, 12] = 4  # a layer of a single spaxel
    layer_map[0, :] = -1  # excluded row
    # real signal growing with layer, and a gradient inside the layers
    sci += 8.0 * np.clip(layer_map, 0, None)[None] + 0.3 * np.arange(nx)[None, None]
    n = 200
    k, y, x = rng.integers(0, nw, n), rng.integers(0, ny, n), rng.integers(0, nx, n)
    sci[k, y, x] += rng.choice([-1, 1], n) * rng.uniform(3, 300, n)
    sci[5] = np.nan  # an all-NaN plane
    sci[9, :, :7] = np.nan  # partly NaN plane
    sci[:, 20:, 22:] = np.nan  # outside the field of view
    err[np.isnan(sci)] = np.nan
    return sci.astype(dtype), err.astype(dtype), layer_map


def _assert_same(result, reference):
    sci, err, flags = reference
    np.testing.assert_array_equal(result.flags, flags)
    np.testing.assert_array_equal(result.sci, sci)
    np.testing.assert_array_equal(result.err, err)


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", ">f8"])
def test_matches_slice_loop(rng, dtype):
    sci, err, layer_map = _cube(rng, dtype)
    result = clip_cube(sci, err, layer_map, method="paper")
    reference = paper_loop(sci, err, layer_map)
    assert result.flags.sum() > 100
    assert result.sci.dtype == np.dtype(dtype).newbyteorder("=")
    _assert_same(result, reference)


def test_matches_slice_loop_other_parameters(rng):
    sci, err, layer_map = _cube(rng, "f4")
    result = clip_cube(sci, err, layer_map, method="paper", sigma=3.0, maxiters=2,
                       block_planes=7)
    _assert_same(result, paper_loop(sci, err, layer_map, sigma=3.0, maxiters=2))


def test_empty_layer_and_excluded_mask(rng):
    sci, err, layer_map = _cube(rng, "f4")
    layer_map[layer_map == 2] = 3  # layer 2 now empty
    excluded = np.zeros(sci.shape, dtype=bool)
    excluded[:, 10:12, 11:14] = True  # DO_NOT_USE voxels inside the target
    result = clip_cube(sci, err, layer_map, method="paper", excluded=excluded)
    _assert_same(result, paper_loop(sci, err, layer_map, excluded=excluded))
    assert not result.flags[excluded].any()
    assert 2 not in result.counts_per_group


def test_group_equals_astropy_sigma_clip_on_its_values(rng):
    """One plane, one group: flags equal astropy's sigma_clip on the group's values."""
    sci, err, layer_map = _cube(rng, "f8")
    result = clip_cube(sci, err, layer_map, method="paper")
    for k in (0, 9, 33):
        values = sci[k][layer_map == 0]
        finite = np.isfinite(values)
        expected = sigma_clip(values[finite], sigma=5, maxiters=5).mask
        got = result.flags[k][layer_map == 0][finite]
        np.testing.assert_array_equal(got, expected)


def test_replacement_is_group_median_before_replacement(rng):
    sci, err, layer_map = _cube(rng, "f8")
    result = clip_cube(sci, err, layer_map, method="paper")
    k, y, x = np.argwhere(result.flags & (layer_map == 1)[None])[0]
    group = sci[k][layer_map == 1]
    egroup = err[k][(layer_map == 1) & np.isfinite(sci[k])]
    assert result.sci[k, y, x] == np.nanmedian(group)
    assert result.err[k, y, x] == np.nanmedian(egroup)


def test_untouched_outside_flags(rng):
    sci, err, layer_map = _cube(rng, "f4")
    result = clip_cube(sci, err, layer_map, method="paper")
    keep = ~result.flags
    np.testing.assert_array_equal(result.sci[keep], sci[keep])
    np.testing.assert_array_equal(result.err[keep], err[keep])
    assert not result.flags[:, layer_map == -1].any()
    assert not result.flags[~np.isfinite(sci)].any()
    assert not result.flags[5].any()  # the all-NaN plane passes through
    assert np.isnan(result.sci[5]).all()


def test_single_outlier_needs_enough_spaxels():
    """A lone outlier in a 20-spaxel layer cannot be flagged at sigma=5 (n/sqrt(n-1) < 5)."""
    nw = 4
    layer_map = np.zeros((10, 10), dtype=int)
    layer_map[:2, :] = 1  # 20 spaxels
    layer_map[2:5, :] = 2  # 30 spaxels
    sci = np.zeros((nw, 10, 10))
    sci[1, 0, 0] = 1e6
    sci[1, 3, 0] = 1e6
    result = clip_cube(sci, np.ones_like(sci), layer_map, method="paper")
    assert not result.flags[1, 0, 0]
    assert result.flags[1, 3, 0]


def test_bad_arguments(rng):
    sci, err, layer_map = _cube(rng, "f4", shape=(10, 24, 26))
    with pytest.raises(CubeFormatError, match="differ"):
        clip_cube(sci, err[:, :-1], layer_map)
    with pytest.raises(CubeFormatError, match="3-D"):
        clip_cube(sci[0], err[0], layer_map)
    with pytest.raises(CubeFormatError, match="floating-point"):
        clip_cube(np.zeros(sci.shape, dtype=np.int32), err, layer_map)
    with pytest.raises(LayerMapError, match="spatial shape"):
        clip_cube(sci, err, layer_map[:-1])
    with pytest.raises(LayerMapError, match="-1 .excluded"):
        clip_cube(sci, err, layer_map - 5)
    with pytest.raises(OptionError, match="--method"):
        clip_cube(sci, err, layer_map, method="nonsense")
    with pytest.raises(OptionError, match="--sigma"):
        clip_cube(sci, err, layer_map, method="paper", sigma=-1)


def test_threads_do_not_change_the_result(rng):
    sci, err, layer_map = _cube(rng, "f4")
    result = clip_cube(sci, err, layer_map, method="paper", block_planes=9, threads=2)
    _assert_same(result, paper_loop(sci, err, layer_map))
