"""Figures, the HTML report (rendered in a real headless browser), report/compare CLIs."""

import base64
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from layerclip.cli import main
from layerclip.clip import clip_cube
from layerclip.errors import LayerclipWarning, OutputError
from layerclip.io import read_cube
from layerclip.layers import auto_layer_map
from layerclip.pipeline import clean_file
from layerclip.report import FIGURES, build_report, report_file
from layerclip.simulate import make_cube
from layerclip.snr import collapsed_snr

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """A small synthetic cube and its layerclip-cleaned product, side by side."""
    folder = tmp_path_factory.mktemp("product")
    cube = make_cube("arc", shape=(300, 27, 27), seed=11, n_artifacts=30, fov_size=20,
                     wave_range=(1.15, 1.185))
    raw = cube.writeto(folder / "raw_s3d.fits")
    cleaned = folder / "raw_cleaned_s3d.fits"
    result, _ = clean_file(raw, cleaned, method="paper", line=cube.line, z=cube.z)
    return {"cube": cube, "raw": raw, "cleaned": cleaned, "result": result}


@pytest.fixture(scope="module")
def report(product, tmp_path_factory):
    """The report of the product, written once for the tests that read it."""
    return report_file(product["cleaned"], out=tmp_path_factory.mktemp("report") / "rep")


def _check_pngs(result, folder):
    assert set(result.figures) == set(FIGURES)
    for path in result.figures.values():
        assert path.parent == Path(folder) and path.read_bytes()[:8] == PNG_MAGIC
        import matplotlib.image as mpimg

        image = mpimg.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image[..., :3].std() > 0.01  # something was drawn
    page = result.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)


# --------------------------------------------------------- figures for real file formats


def _format_cube(shared_data, name):
    """Read a real cube with layerclip.io.read_cube (JWST s3d, MUSE, KCWI layouts)."""
    path = shared_data / name
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return read_cube(path)


@pytest.mark.parametrize("name, fmt", [
    ("miri_mrs_simulated_s3d.fits", "jwst"),
    ("muse_udf_subcube.fits", "muse"),
    ("kb191227_00112_icubes.fits", "kcwi"),
])
def test_figures_for_real_formats(shared_data, tmp_path, name, fmt):
    cube = _format_cube(shared_data, name)
    if fmt == "kcwi":
        assert cube.excluded.mean() > 0.3  # the zero padding is read as no data
    excluded = cube.excluded
    snr, _ = collapsed_snr(cube.sci, cube.err, np.arange(cube.shape[0]), excluded=excluded)
    # The simulated MIRI cube is pure noise: take its upper 40% of spaxels as "target".
    threshold = float(np.nanpercentile(snr, 60)) if fmt == "jwst" else 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerclipWarning)  # fewer layers than asked
        layer_map, _ = auto_layer_map(snr, threshold=threshold,
                                      n_layers=1 if fmt == "jwst" else 3,
                                      no_data=excluded.all(axis=0))
    rng = np.random.default_rng(5)
    good = np.argwhere(~excluded)
    hits = tuple(good[rng.choice(len(good), 20, replace=False)].T)
    sci = cube.sci.copy()
    sci[hits] += 80 * cube.err[hits]
    original = replace(cube, sci=sci)
    result = clip_cube(sci, cube.err, layer_map, method="paper", excluded=excluded)
    report = build_report(replace(cube, sci=result.sci), result.flags, layer_map,
                          original=original, out=tmp_path / fmt, title=f"{fmt} test")
    _check_pngs(report, tmp_path / fmt)
    # Every one of these layouts converts to the paper's erg/s/cm2/A.
    assert report.comparison.unit == "erg / (s cm2 Angstrom)"
    assert report.spikes_after <= report.spikes_before
    b = report.benchmarks
    assert 0 <= b.sky_slice < cube.shape[0] and 0 <= b.target_slice < cube.shape[0]


# ------------------------------------------------------------------ report from files


def test_report_file_finds_the_original(product, report):
    _check_pngs(report, report.html.parent)
    assert report.spikes_before > report.spikes_after
    comp = report.comparison
    assert comp.labels == ["original", "cleaned"]
    assert comp.fractions[1] == pytest.approx(
        product["result"].n_flagged / (~np.isnan(product["cube"].sci)).sum())
    assert comp.line_name == "[O III]5008" and comp.line_fluxes[1] > 0
    page = report.html.read_text()
    for text in ("Leftover artifacts", "raw_s3d.fits", "layer 1", "MAD before",
                 "layerclip method=paper", "[O III]5008"):
        assert text in page
    # Layer counts add up to what the cleaning replaced.
    assert sum(r["replaced"] for r in report.layer_counts) == product["result"].n_flagged
    with pytest.raises(OutputError, match="already exists"):
        report_file(product["cleaned"], out=report.html.parent)


def test_report_rebuilds_the_original_from_the_undo_table(product, report, tmp_path):
    alone = tmp_path / "alone_s3d.fits"
    shutil.copy(product["cleaned"], alone)  # the input is not next to it
    rebuilt = report_file(alone, out=tmp_path / "rep")
    assert "rebuilt from the ORIGINAL (undo) table" in rebuilt.html.read_text()
    assert rebuilt.spikes_before == report.spikes_before
    assert rebuilt.comparison.fractions[0] == 0.0  # the OUTLIER bits were undone too
    for a, b in zip(rebuilt.comparison.spectra, report.comparison.spectra, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_report_without_any_original(product, tmp_path):
    from astropy.io import fits

    alone = tmp_path / "alone_s3d.fits"
    with fits.open(product["cleaned"]) as hdul:
        keep = [h for h in hdul if h.name not in ("ORIGINAL", "ORIGHDR")]
        fits.HDUList(keep).writeto(alone)
    report = report_file(alone, out=tmp_path / "rep")
    assert report.spikes_before is None and report.comparison.labels == ["cleaned"]
    assert "original cube was not given" in report.html.read_text()


def test_cli_clean_report_and_compare(product, tmp_path, capsys):
    cube = product["cube"]
    out = tmp_path / "clean_s3d.fits"
    rc = main(["clean", str(product["raw"]), "-o", str(out), "--method", "paper", "--line",
               cube.line, "--z", str(cube.z), "--report", str(tmp_path / "rep")])
    assert rc == 0 and (tmp_path / "rep" / "report.html").exists()
    text = capsys.readouterr().out
    assert "fig4_integrated.png" in text and "spikes" in text
    # The report exists: clean refuses before doing any work, report needs --overwrite.
    rc = main(["clean", str(product["raw"]), "-o", str(tmp_path / "other.fits"), "--line",
               cube.line, "--z", str(cube.z), "--report", str(tmp_path / "rep")])
    assert rc == 2 and not (tmp_path / "other.fits").exists()
    assert "report.html already exists" in capsys.readouterr().err
    rc = main(["report", str(out), "--original", str(product["raw"]), "--out",
               str(tmp_path / "rep"), "--overwrite", "--range", "1.15", "1.16",
               "--target-slice", "5"])
    assert rc == 0
    assert "1.15-1.16 um" in capsys.readouterr().out

    figure = tmp_path / "fig4.png"
    rc = main(["compare", str(product["raw"]), str(out), "--labels", "none", "layerclip",
               "--reference", "1", "--out", str(figure)])
    assert rc == 0 and figure.read_bytes()[:8] == PNG_MAGIC
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split()
            and line.split()[0] in ("none", "layerclip")}
    assert int(rows["none"][1]) > int(rows["layerclip"][1])
    assert rows["layerclip"][2].endswith("%") and float(rows["layerclip"][2][:-1]) > 0
    rc = main(["compare", str(product["raw"]), str(out), "--labels", "only-one"])
    assert rc == 2 and "--labels" in capsys.readouterr().err
    rc = main(["compare", str(product["raw"]), "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "no target mask" in capsys.readouterr().err


def test_plotting_functions_draw_into_given_axes(product):
    import matplotlib.pyplot as plt

    from layerclip.plotting.diagnostics import (
        plot_benchmark_spectrum,
        plot_integrated_spectra,
        plot_residual_histogram,
    )

    cube = product["cube"]
    fig, axes = plt.subplots(1, 3)
    try:
        wave = cube.wavelength
        assert plot_benchmark_spectrum(wave, cube.sci[:, 13, 13], cube.clean[:, 13, 13],
                                       plane=100, window=20, ax=axes[0]) is fig
        spec = np.nansum(cube.sci, axis=(1, 2))
        assert plot_integrated_spectra(wave, [spec], labels=["a"], ax=axes[1]) is fig
        assert plot_residual_histogram([spec - np.median(spec)], ax=axes[2]) is fig
        assert len(axes[0].lines) >= 2
    finally:
        plt.close(fig)


def test_importing_diagnostics_does_not_load_matplotlib():
    code = ("import sys, layerclip.diagnostics, layerclip.report, "
            "layerclip.plotting.diagnostics, layerclip.cli; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ headless browser

_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; });
  var div = document.createElement("div");
  div.id = "layerclip-image-check";
  div.textContent = "IMAGES " + ok.length + "/" + imgs.length;
  document.body.appendChild(div);
});
</script>"""


def _chromium():
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _rendered_images(browser, page, tmp_path):
    """Open ``page`` with a marker script appended; return (decoded, total) images."""
    probe = tmp_path / f"probe_{page.stem}.html"
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
               probe.as_uri()]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=25)
        except subprocess.TimeoutExpired:
            pytest.skip("headless chromium did not finish within 25 s")
    found = re.search(r"IMAGES (\d+)/(\d+)", out.stdout)
    if found is None:
        if out.returncode != 0:
            pytest.skip(f"headless chromium could not run here (exit {out.returncode}): "
                        f"{out.stderr.strip().splitlines()[-1:] }")
        raise AssertionError(f"the page's check script did not run: {out.stdout[-500:]}")
    return int(found.group(1)), int(found.group(2))


@pytest.mark.browser
def test_html_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get "
                    "where it can; or: apt-get install -y chromium)")
    decoded, total = _rendered_images(browser, report.html, tmp_path)
    assert (decoded, total) == (len(FIGURES), len(FIGURES))
    # Control: the same check notices a figure that does not decode.
    broken = tmp_path / "broken.html"
    text = report.html.read_text()
    first = text.index("base64,") + len("base64,")
    bad = base64.b64encode(b"not a png at all").decode()
    broken.write_text(text[:first] + bad + text[text.index('"', first):])
    assert _rendered_images(browser, broken, tmp_path) == (len(FIGURES) - 1, len(FIGURES))
