"""Array-level diagnostics: benchmarks, spike counting, integrated spectra, units."""

import numpy as np
import pytest
from astropy import units as u

from layerclip import diagnostics as D
from layerclip.clip import clip_cube
from layerclip.errors import CubeFormatError, LayerMapError, OptionError
from layerclip.layers import auto_layer_map
from layerclip.lines import LINES, line_window, observed_wavelength
from layerclip.simulate import make_cube
from layerclip.snr import collapsed_snr


def _cleaned(cube):
    """Layer map from the [O III] window and a paper-mode cleaning of a synthetic cube."""
    excluded = ~np.isfinite(cube.sci)
    _, centre = observed_wavelength(cube.line, cube.z)
    snr, _ = collapsed_snr(cube.sci, cube.err, line_window(cube.wavelength, centre),
                           excluded=excluded)
    layer_map, _ = auto_layer_map(snr, no_data=excluded.all(axis=0))
    result = clip_cube(cube.sci, cube.err, layer_map, method="paper", excluded=excluded)
    return layer_map, result


@pytest.mark.parametrize("seed", [0, 1, 4, 7])
def test_automatic_benchmarks_land_on_injected_artifacts(seed):
    cube = make_cube("arc", shape=(400, 31, 31), seed=seed, n_artifacts=40, fov_size=22,
                     wave_range=(1.14, 1.19))
    layer_map, result = _cleaned(cube)
    b = D.choose_benchmarks(cube.sci, result.sci, result.flags, layer_map, err=cube.err)
    truth = cube.artifact_mask
    sky, target = layer_map == 0, layer_map > 0
    assert b.source == "automatic"
    # Both benchmark slices hold injected artifacts in their own group.
    assert (truth[b.sky_slice] & sky).any()
    assert (truth[b.target_slice] & target).any()
    # One normal sky spaxel (untouched), then up to three on replaced voxels.
    assert b.sky_kinds[0] == "normal"
    y, x = b.sky_spaxels[0]
    window = slice(max(0, b.sky_slice - 40), b.sky_slice + 41)
    assert sky[y, x] and not result.flags[window, y, x].any()
    assert b.sky_kinds.count("replaced") >= 2
    for (y, x), kind in zip(b.sky_spaxels, b.sky_kinds, strict=True):
        if kind == "replaced":
            assert sky[y, x] and result.flags[b.sky_slice, y, x]
            assert truth[b.sky_slice, y, x], f"sky pick {(y, x)} is not an injected artifact"
    # Four target spaxels over the layers, low to high; replaced picks are artifacts.
    assert len(b.target_spaxels) == 4
    assert b.target_layers == sorted(b.target_layers)
    assert b.target_layers[0] == 1 and b.target_layers[-1] == layer_map.max()
    assert "replaced" in b.target_kinds
    for (y, x), layer, kind in zip(b.target_spaxels, b.target_layers, b.target_kinds,
                                   strict=True):
        assert layer_map[y, x] == layer
        if kind == "replaced":
            assert truth[b.target_slice, y, x], f"target pick {(y, x)} is not an artifact"
    assert len(set(b.target_spaxels)) == 4


def test_benchmark_slices_are_densest_replacements(small_cube):
    layer_map, result = _cleaned(small_cube)
    # Without ERR every replacement counts: the slices are the plain argmax.
    b = D.choose_benchmarks(small_cube.sci, result.sci, result.flags, layer_map)
    sky_loop = [int(result.flags[k][layer_map == 0].sum()) for k in range(400)]
    tgt_loop = [int(result.flags[k][layer_map > 0].sum()) for k in range(400)]
    assert b.sky_slice == int(np.argmax(sky_loop))
    assert b.target_slice == int(np.argmax(tgt_loop))
    sky, tgt = D.flag_density(result.flags, layer_map)
    assert sky.tolist() == sky_loop and tgt.tolist() == tgt_loop


def test_user_benchmarks_are_kept_and_checked(small_cube):
    layer_map, result = _cleaned(small_cube)
    b = D.choose_benchmarks(small_cube.sci, result.sci, result.flags, layer_map,
                            sky_slice=10, target_slice=20, sky_spaxels=[(3, 15)],
                            target_spaxels=[(15, 15), (16, 16)])
    assert (b.sky_slice, b.target_slice, b.source) == (10, 20, "user")
    assert b.sky_spaxels == [(3, 15)] and b.target_spaxels == [(15, 15), (16, 16)]
    assert b.target_layers == [int(layer_map[15, 15]), int(layer_map[16, 16])]
    with pytest.raises(OptionError, match="sky slice 400"):
        D.choose_benchmarks(small_cube.sci, result.sci, result.flags, layer_map,
                            sky_slice=400)
    with pytest.raises(OptionError, match=r"target spaxel \(99, 0\)"):
        D.choose_benchmarks(small_cube.sci, result.sci, result.flags, layer_map,
                            target_spaxels=[(99, 0)])
    with pytest.raises(LayerMapError, match="does not match"):
        D.choose_benchmarks(small_cube.sci, result.sci, result.flags, layer_map[:5])


# ---------------------------------------------------------------- spike counting (1-D)


def _spectrum_with_spikes(seed):
    """Continuum + three emission lines + noise + known spikes (1-3 planes, both signs)."""
    rng = np.random.default_rng(seed)
    nw = 1500
    wave = np.linspace(1.10, 1.50, nw)
    z = 1.3293
    continuum = 40.0 + 25.0 * (wave - 1.3) - 60.0 * (wave - 1.3) ** 2
    lines = [LINES["Hb"], LINES["[O III]4960"], LINES["[O III]5008"]]
    spectrum = continuum.copy()
    for rest, amp in zip(lines, (30.0, 60.0, 180.0), strict=True):
        centre = rest * (1 + z) * 1e-4
        sig = centre * 80.0 / 299_792.458
        spectrum += amp * np.exp(-0.5 * ((wave - centre) / sig) ** 2)
    noise = 1.0
    spectrum += rng.normal(0.0, noise, nw)
    line_mask = D.line_mask_from_lines(wave, z=z, lines=lines, width_kms=1200.0)
    free = np.flatnonzero(~line_mask[3:-4]) + 3
    peaks = []
    while len(peaks) < 12:
        k = int(rng.choice(free))
        if all(abs(k - p) > 8 for p in peaks) and not line_mask[k - 3:k + 4].any():
            peaks.append(k)
    peaks = np.sort(peaks)
    for k in peaks:
        width = int(rng.integers(1, 4))
        amp = float(rng.uniform(12.0, 60.0)) * (-1 if rng.random() < 0.25 else 1)
        shape = {1: [1.0], 2: [1.0, 0.5], 3: [0.45, 1.0, 0.4]}[width]
        start = k - (1 if width == 3 else 0)
        spectrum[start:start + width] += amp * np.array(shape)
    return wave, spectrum, line_mask, peaks


@pytest.mark.parametrize("seed", range(5))
def test_spike_counter_returns_injected_count(seed):
    wave, spectrum, line_mask, peaks = _spectrum_with_spikes(seed)
    count, residual = D.leftover_spikes(spectrum, line_mask=line_mask, nsigma=5.0)
    assert count.count == len(peaks)
    assert count.peaks.tolist() == peaks.tolist()
    assert np.isnan(residual[line_mask]).all()
    assert count.noise == pytest.approx(1.0, rel=0.15)  # robust scatter finds the noise
    # Lines are not spikes only because they are masked: without the mask they count.
    unmasked, _ = D.leftover_spikes(spectrum, nsigma=5.0)
    assert unmasked.count > len(peaks)


def test_spike_counter_range_and_sign():
    wave, spectrum, line_mask, peaks = _spectrum_with_spikes(3)
    residual, _ = D.continuum_subtract(spectrum, mask=line_mask)
    lo, hi = 1.2, 1.4
    inside = peaks[(wave[peaks] >= lo) & (wave[peaks] <= hi)]
    count = D.count_spikes(residual, wavelength_um=wave, wave_range=(hi, lo))
    assert count.count == inside.size and count.wave_range == (lo, hi)
    assert count.n_planes == int(((wave >= lo) & (wave <= hi) & ~line_mask).sum())
    pos = D.count_spikes(residual, sign="positive")
    neg = D.count_spikes(residual, sign="negative")
    both = D.count_spikes(residual)
    assert pos.count + neg.count == both.count == len(peaks)
    assert (pos.heights > 0).all() and (neg.heights < 0).all()
    assert "spikes beyond 5 sigma" in both.describe()
    with pytest.raises(OptionError, match="needs wavelength_um"):
        D.count_spikes(residual, wave_range=(1, 2))
    with pytest.raises(OptionError, match="sign"):
        D.count_spikes(residual, sign="up")


def test_spike_spanning_planes_counts_once():
    residual = np.zeros(200)
    residual[::2] = 0.5
    residual[50:53] = [10.0, 30.0, 12.0]   # one artifact over three planes
    residual[100] = 20.0
    residual[102] = 15.0                    # a one-plane gap: still one spike
    residual[150] = 20.0
    residual[160] = -25.0                   # a negative hole
    count = D.count_spikes(residual, noise=1.0)
    assert count.count == 4
    assert count.peaks.tolist() == [51, 100, 150, 160]
    assert D.count_spikes(residual, noise=1.0, merge=0).count == 5


def test_continuum_subtract_ignores_masked_lines():
    x = np.arange(500, dtype=float)
    continuum = 5 + 0.01 * x
    spectrum = continuum + 100.0 * np.exp(-0.5 * ((x - 250) / 6.0) ** 2)
    mask = np.abs(x - 250) <= 45
    residual, fitted = D.continuum_subtract(spectrum, mask=mask, window=51)
    inner = slice(25, 475)  # a running median is exact on a ramp away from the ends
    assert np.allclose(fitted[inner], continuum[inner], atol=1e-9)
    assert np.allclose(residual[inner][~mask[inner]], 0.0, atol=1e-9)
    assert np.abs(fitted - continuum).max() < 0.3
    # Unmasked, the line lifts the running median: the mask is what keeps it out.
    _, lifted = D.continuum_subtract(spectrum, window=51)
    assert lifted[250] > continuum[250] + 5


def test_line_mask_from_lines_matches_line_window():
    wave = np.linspace(1.1, 1.5, 2000)
    mask = D.line_mask_from_lines(wave, z=1.3293, lines=[LINES["[O III]5008"]],
                                  width_kms=750.0)
    _, centre = observed_wavelength("[O III]5008", 1.3293)
    assert np.flatnonzero(mask).tolist() == line_window(wave, centre, 750.0).tolist()


def test_detect_line_planes_finds_lines_not_artifacts(small_cube):
    layer_map, _ = _cleaned(small_cube)
    target = layer_map > 0
    lines = D.detect_line_planes(small_cube.sci, small_cube.err, target)
    _, centre = observed_wavelength("[O III]5008", small_cube.z)
    peak = int(np.argmin(np.abs(small_cube.wavelength - centre)))
    assert lines[peak]
    # No artifact away from the lines makes a plane look like a line.
    for art in small_cube.artifacts:
        if not art.on_line and target[art.ys, art.xs].any():
            near = slice(max(0, art.planes.min() - 6), art.planes.max() + 7)
            model_line = small_cube.model[near][:, target].max() > 5 * small_cube.err.max()
            if not model_line:
                assert not lines[art.planes].any(), f"artifact at {art.planes} taken as a line"


# ------------------------------------------------------- integrated spectra and stats


def test_integrated_spectrum_against_loop(rng):
    sci = rng.normal(size=(30, 6, 7))
    err = np.abs(rng.normal(1.0, 0.1, size=sci.shape))
    sci[3, 2, 2] = np.nan
    sci[5] = np.nan
    excluded = np.zeros(sci.shape, dtype=bool)
    excluded[7, 1, 1] = True
    target = np.zeros((6, 7), dtype=bool)
    target[1:4, 1:5] = True
    spec = D.integrated_spectrum(sci, target, excluded=excluded)
    noise = D.integrated_noise(err, target, excluded=excluded)
    for k in range(30):
        vals = [sci[k, y, x] for y in range(6) for x in range(7)
                if target[y, x] and np.isfinite(sci[k, y, x]) and not excluded[k, y, x]]
        errs = [err[k, y, x] for y in range(6) for x in range(7)
                if target[y, x] and not excluded[k, y, x]]
        if vals:
            assert spec[k] == pytest.approx(sum(vals))
        else:
            assert np.isnan(spec[k])
        assert noise[k] == pytest.approx(np.sqrt(sum(e * e for e in errs)), rel=1e-9)
    with pytest.raises(LayerMapError, match="empty"):
        D.integrated_spectrum(sci, np.zeros((6, 7), bool))
    with pytest.raises(CubeFormatError, match="3-D"):
        D.integrated_spectrum(sci[0], target)


def test_group_stats_by_hand():
    layer_map = np.array([[-1, 0, 0], [0, 1, 1], [1, 2, 2]])
    before = np.array([[99.0, 1.0, 2.0], [3.0, 10.0, 50.0], [12.0, 7.0, np.nan]])
    after = before.copy()
    after[1, 2] = 11.0
    rows = {r["group"]: r for r in D.group_stats(before, after, layer_map)}
    assert list(rows) == ["sky", "layer 1", "layer 2"]
    sky = rows["sky"]
    assert (sky["n"], sky["median_before"], sky["mad_before"]) == (3, 2.0, 1.0)
    assert (sky["min_before"], sky["max_before"]) == (1.0, 3.0)
    l1 = rows["layer 1"]
    assert (l1["median_before"], l1["max_before"], l1["max_after"]) == (12.0, 50.0, 12.0)
    assert l1["mad_before"] == 2.0 and l1["median_after"] == 11.0 and l1["mad_after"] == 1.0
    assert rows["layer 2"]["n"] == 1 and rows["layer 2"]["median_after"] == 7.0


# ------------------------------------------------------------------------------ units


def test_flam_factor_mjy_per_sr_as_the_paper():
    wave = np.array([1.0, 1.5, 2.0])
    pixar = 2.35e-13
    factor = D.flam_factor(wave, unit="MJy/sr", pixel_area_sr=pixar)
    # By hand: 1 MJy = 1e-17 erg/s/cm2/Hz; F_lambda = F_nu c / lambda^2.
    c_aa = 2.99792458e18
    expected = pixar * 1e-17 * c_aa / (wave * 1e4) ** 2
    assert np.allclose(factor, expected, rtol=1e-10)
    cube = np.ones((3, 2, 2))
    assert np.allclose(D.to_flam(cube, wave, unit="MJy/sr", pixel_area_sr=pixar)[:, 1, 1],
                       expected)
    # Any surface brightness unit goes the same way (checked against astropy directly).
    arcsec = D.flam_factor(wave, unit="mJy/arcsec^2", pixel_area_sr=pixar)
    check = (1 * u.mJy / u.arcsec**2 * pixar * u.sr).to(
        u.erg / u.s / u.cm**2 / u.AA, equivalencies=u.spectral_density(wave * u.um))
    assert np.allclose(arcsec, check.value)


def test_flam_factor_per_wavelength_units_and_refusals():
    wave = np.array([0.5, 0.6])
    assert np.allclose(D.flam_factor(wave, unit="FLAM16"), 1e-16)
    assert np.allclose(D.flam_factor(wave, unit="10**-20 Angstrom-1 cm-2 erg s-1"), 1e-20)
    with pytest.raises(OptionError, match="PIXAR_SR"):
        D.flam_factor(wave, unit="MJy/sr")
    with pytest.raises(OptionError, match="not a unit"):
        D.flam_factor(wave, unit="bananas per fortnight")
    with pytest.raises(OptionError, match="cannot convert"):
        D.flam_factor(wave, unit="K")
    with pytest.raises(OptionError, match="no BUNIT"):
        D.flam_factor(wave, unit="")


def test_line_flux_recovers_a_gaussian():
    wave = np.linspace(1.10, 1.20, 800)
    step_aa = (wave[1] - wave[0]) * 1e4
    centre, sigma_um, total = 1.15, 0.0004, 3.0e-16  # erg/s/cm2
    profile = np.exp(-0.5 * ((wave - centre) / sigma_um) ** 2)
    flam = 1e-18 + total * profile / (sigma_um * 1e4 * np.sqrt(2 * np.pi))
    planes = line_window(wave, centre, 2000.0)
    assert D.line_flux(flam, wave, planes) == pytest.approx(total, rel=0.01)
    assert step_aa > 0
