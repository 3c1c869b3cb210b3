"""Property tests (hypothesis) of the statistics core and of the undo round trip.

- paper mode equals astropy's ``sigma_clip`` on arbitrary finite/NaN arrays and groupings,
  checked against the slice loop (:func:`layerclip.reference.paper_loop`) and against
  ``sigma_clip`` called directly on each group's values;
- clipping never changes voxels outside the group it processes (other groups' values do
  not matter, excluded spaxels and unflagged voxels are never touched);
- flags are a subset of the finite, not-excluded voxels of layer >= 0;
- restore(clean(x)) == x, byte for byte, for arbitrary cubes written to FITS.
"""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clip
from astropy.utils.exceptions import AstropyUserWarning
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from layerclip.clip import clip_cube
from layerclip.reference import paper_loop

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cubes(draw, *, max_planes=4, max_side=6):
    """(sci, err, layer_map, excluded): float32 or float64, NaNs anywhere, groups -1..3."""
    nw = draw(st.integers(1, max_planes))
    ny = draw(st.integers(1, max_side))
    nx = draw(st.integers(1, max_side))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = (nw, ny, nx)
    # A mix of scales: ordinary noise, repeated values, and large outliers. The dynamic
    # range is bounded (|x| >= 1e-3 or 0, outliers <= 1e4): see test_extreme_dynamic_range.
    elements = st.one_of(
        st.floats(-10, 10, width=32).filter(lambda v: v == 0 or abs(v) >= 1e-3),
        st.sampled_from([0.0, 1.0, -1.0, 1e3, -1e3, 1e4]),
        st.integers(-3, 3).map(float),
    )
    sci = draw(hnp.arrays(dtype, shape, elements=elements))
    nan = draw(hnp.arrays(bool, shape, elements=st.booleans()))
    sci[nan & draw(hnp.arrays(bool, shape, elements=st.booleans()))] = np.nan
    err = draw(hnp.arrays(dtype, shape, elements=st.floats(0.0625, 5, width=32)))
    layer_map = draw(hnp.arrays(np.int16, (ny, nx), elements=st.integers(-1, 3)))
    excluded = draw(hnp.arrays(bool, shape, elements=st.booleans())) & draw(
        hnp.arrays(bool, shape, elements=st.booleans()))
    return sci, err, layer_map, excluded


clip_options = st.fixed_dictionaries({
    "sigma": st.sampled_from([1.5, 2.0, 3.0, 5.0]),
    "maxiters": st.sampled_from([1, 2, 5, None]),
})


def _paper(sci, err, layer_map, excluded, **options):
    return clip_cube(sci, err, layer_map, method="paper", excluded=excluded, **options)


@SETTINGS
@given(cubes(), clip_options)
def test_paper_equals_slice_loop(cube, options):
    sci, err, layer_map, excluded = cube
    result = _paper(sci, err, layer_map, excluded, **options)
    ref_sci, ref_err, ref_flags = paper_loop(sci, err, layer_map, excluded=excluded, **options)
    np.testing.assert_array_equal(result.flags, ref_flags)
    np.testing.assert_array_equal(result.sci, ref_sci)
    np.testing.assert_array_equal(result.err, ref_err)


@SETTINGS
@given(cubes(), clip_options)
def test_paper_equals_sigma_clip_on_each_group(cube, options):
    """Independent of paper_loop: sigma_clip on the 1-D usable values of each group."""
    sci, err, layer_map, excluded = cube
    result = _paper(sci, err, layer_map, excluded, **options)
    for k in range(sci.shape[0]):
        usable = np.isfinite(sci[k]) & ~excluded[k]
        for g in np.unique(layer_map[layer_map >= 0]):
            members = (layer_map == g) & usable
            values = sci[k][members]
            if values.size == 0:
                assert not result.flags[k][layer_map == g].any()
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyUserWarning)
                mask = sigma_clip(values, **options).mask
            np.testing.assert_array_equal(result.flags[k][members], mask)
            if mask.any():
                assert np.all(result.sci[k][members][mask] == np.median(values))
                assert np.all(result.err[k][members][mask] == np.median(err[k][members]))


@SETTINGS
@given(cubes(), clip_options, st.data())
def test_groups_are_independent(cube, options, data):
    """Changing every voxel outside group g changes nothing inside it."""
    sci, err, layer_map, excluded = cube
    groups = np.unique(layer_map[layer_map >= 0])
    if groups.size == 0:
        return
    g = data.draw(st.sampled_from(list(groups)))
    other = np.broadcast_to(layer_map != g, sci.shape)
    noise = data.draw(hnp.arrays(sci.dtype, sci.shape,
                                 elements=st.floats(-1e5, 1e5, width=32)))
    changed = np.where(other, noise, sci)
    a = _paper(sci, err, layer_map, excluded, **options)
    b = _paper(changed, err, layer_map, excluded, **options)
    inside = ~other
    np.testing.assert_array_equal(a.flags[inside], b.flags[inside])
    np.testing.assert_array_equal(a.sci[inside], b.sci[inside])
    np.testing.assert_array_equal(a.err[inside], b.err[inside])


@SETTINGS
@given(cubes(), clip_options)
def test_flags_subset_of_usable_and_nothing_else_changes(cube, options):
    sci, err, layer_map, excluded = cube
    result = _paper(sci, err, layer_map, excluded, **options)
    usable = np.isfinite(sci) & ~excluded & (layer_map >= 0)[None]
    assert not (result.flags & ~usable).any()
    keep = ~result.flags
    # bit for bit, NaNs included, for every voxel not flagged
    assert result.sci[keep].tobytes() == sci[keep].tobytes()
    assert result.err[keep].tobytes() == err[keep].tobytes()
    assert np.isfinite(result.sci[result.flags]).all()


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cubes(max_planes=5, max_side=7), st.sampled_from([1.5, 2.0]), st.booleans())
def test_restore_of_clean_is_identity(tmp_path_factory, cube, sigma, with_dq):
    from layerclip.io.layermap import layer_map_hdu
    from layerclip.io.output import write_cleaned
    from layerclip.io.undo import restore_file

    sci, err, layer_map, excluded = cube
    folder = tmp_path_factory.mktemp("prop")
    nw = sci.shape[0]
    header = fits.Header({"CTYPE3": "WAVE", "CUNIT3": "um", "CRVAL3": 1.5, "CDELT3": 0.001,
                          "CRPIX3": 1.0})
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(sci, header=header, name="SCI"),
            fits.ImageHDU(err, name="ERR")]
    if with_dq:
        hdus.append(fits.ImageHDU(excluded.astype(np.uint32), name="DQ"))
    src = folder / "cube.fits"
    fits.HDUList(hdus).writeto(src)
    if not np.isfinite(sci).any():
        return  # refused as all-NaN (tested in test_bad_inputs)
    result = clip_cube(sci, err, layer_map, method="paper", sigma=sigma,
                       excluded=excluded if with_dq else None)
    out = folder / "clean.fits"
    write_cleaned(src, out, result, layer_hdu=layer_map_hdu(layer_map),
                  history=["layerclip test"])
    if nw and result.flags.any():
        assert out.read_bytes() != src.read_bytes()
    restore_file(out, folder / "restored.fits")
    assert (folder / "restored.fits").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flag_counts_seen_by_the_strategy(dtype):
    """Over a fixed batch of drawn cubes, some voxels are flagged (non-vacuous properties)."""
    rng = np.random.default_rng(1)
    total = 0
    for _ in range(20):
        sci = rng.normal(size=(3, 5, 5)).astype(dtype)
        sci[rng.random(sci.shape) < 0.05] = 1e4
        sci[rng.random(sci.shape) < 0.1] = np.nan
        layer_map = rng.integers(-1, 3, (5, 5)).astype(np.int16)
        total += _paper(sci, np.ones_like(sci), layer_map, None, sigma=2.0).n_flagged
    assert total > 10


def test_extreme_dynamic_range():
    """Values ~1e-16 next to values ~1 (found by hypothesis): the run's spread survives."""
    sci = np.array([[[0.0, 1.0, 2.220446e-16, 2.0]]], dtype=np.float32)
    layer_map = np.zeros((1, 4), dtype=np.int16)
    result = _paper(sci, np.ones_like(sci), layer_map, None, sigma=1.5, maxiters=5)
    _, _, ref_flags = paper_loop(sci, np.ones_like(sci), layer_map, sigma=1.5, maxiters=5)
    np.testing.assert_array_equal(result.flags, ref_flags)
