"""Seeded synthetic NIRSpec-like IFU cubes with known injected artifacts.

Shared by the demo, the tests and the benchmarks. A cube is built as

``sci = model + noise + artifacts``

where ``model`` is the noise-free sky+target signal, ``noise`` is Gaussian with the
per-voxel ERR (which rises towards the edge of a rotated field of view, as fewer
dithers cover it), and ``artifacts`` are cosmic-ray-like residuals spanning 1-3
planes and 1-4 spaxels whose positions and amplitudes are recorded.

Three properties of real level-3 cubes can be switched on: noise correlated
between neighbouring spaxels (cube building resamples each detector pixel onto
several spaxels; Law et al. 2023, arXiv:2306.05520, find the noise of spectra
extracted from JWST IFU cubes underestimated by factors of 1.5-3 when that
covariance is ignored), an ERR array that misstates the noise, and voxels without
data (NaN holes).
"""

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from scipy import ndimage

from .io.cube import DO_NOT_USE, NON_SCIENCE
from .lines import C_KMS, LINES

__all__ = ["Artifact", "SyntheticCube", "make_cube", "inject_artifacts", "KINDS",
           "score_flags"]

KINDS = ("arc", "compact", "faint", "continuum", "ringing")

# Relative strengths of the lines in the emission-line kinds.
_LINE_RATIOS = {"[O III]5008": 1.0, "[O III]4960": 0.335, "Hb": 0.3, "Ha": 0.9,
                "[N II]6585": 0.25, "[N II]6550": 0.085}


@dataclass
class Artifact:
    """One injected artifact: the voxels it touches and what was added to them."""

    planes: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    values: np.ndarray
    peak_sigma: float
    on_line: bool = False

    @property
    def voxels(self):
        return self.planes, self.ys, self.xs


@dataclass
class SyntheticCube:
    """A synthetic cube with everything known about it.

    Attributes
    ----------
    sci, err : ndarray (float32), shape (nw, ny, nx)
        The cube with artifacts, and its 1-sigma uncertainty as written (NaN
        outside the field): ``err_scale`` times the true noise.
    clean : ndarray (float32)
        The same cube without artifacts (same noise realisation).
    model : ndarray (float32)
        The noise-free signal.
    dq, wmap : ndarray
        DQ flags (DO_NOT_USE | NON_SCIENCE outside the field) and weight map.
    wavelength : ndarray
        Microns, linear.
    footprint : ndarray of bool, shape (ny, nx)
        Spaxels inside the rotated field of view.
    artifacts : list of Artifact
    z : float
    line : str
        The brightest line (for the S/N map), None for continuum-only kinds.
    kind : str
    neighbour_model : ndarray or None
        The companion's noise-free signal (``make_cube``'s ``neighbour``).
    err_scale : float
        ``err`` over the true noise (1 unless ``make_cube`` was asked otherwise).
    """

    sci: np.ndarray
    err: np.ndarray
    clean: np.ndarray
    model: np.ndarray
    dq: np.ndarray
    wmap: np.ndarray
    wavelength: np.ndarray
    footprint: np.ndarray
    artifacts: list = field(default_factory=list)
    z: float = 0.0
    line: str | None = None
    kind: str = "arc"
    neighbour_model: np.ndarray | None = None
    err_scale: float = 1.0

    @property
    def artifact_mask(self):
        """Boolean cube, True on every voxel an artifact touched."""
        mask = np.zeros(self.sci.shape, dtype=bool)
        for art in self.artifacts:
            mask[art.voxels] = True
        return mask

    def hdulist(self):
        """The cube as a JWST level-3 ``s3d`` file (PRIMARY, SCI, ERR, DQ, WMAP)."""
        nw, ny, nx = self.sci.shape
        primary = fits.PrimaryHDU()
        ph = primary.header
        ph["TELESCOP"] = "JWST"
        ph["INSTRUME"] = "NIRSPEC"
        ph["EXP_TYPE"] = "NRS_IFU"
        ph["GRATING"] = "G140H"
        ph["FILTER"] = "F100LP"
        ph["TARGNAME"] = f"LAYERCLIP-SIM-{self.kind.upper()}"
        ph["DATAMODL"] = "IFUCubeModel"
        ph["FILETYPE"] = "SIMULATED"
        ph["COMMENT"] = "Synthetic cube made by layerclip.simulate; not an observation."
        wcs = fits.Header()
        wcs["WCSAXES"] = 3
        wcs["CTYPE1"], wcs["CTYPE2"], wcs["CTYPE3"] = "RA---TAN", "DEC--TAN", "WAVE"
        wcs["CUNIT1"], wcs["CUNIT2"], wcs["CUNIT3"] = "deg", "deg", "um"
        wcs["CRPIX1"], wcs["CRPIX2"], wcs["CRPIX3"] = (nx + 1) / 2, (ny + 1) / 2, 1.0
        wcs["CRVAL1"], wcs["CRVAL2"] = 260.9, 34.2
        wcs["CRVAL3"] = float(self.wavelength[0])
        wcs["CDELT1"], wcs["CDELT2"] = -0.1 / 3600, 0.1 / 3600
        wcs["CDELT3"] = float(self.wavelength[1] - self.wavelength[0])
        wcs["RADESYS"] = "ICRS"
        wcs["SPECSYS"] = "BARYCENT"
        sci_h = wcs.copy()
        sci_h["BUNIT"] = "MJy/sr"
        sci_h["PIXAR_SR"] = ((0.1 / 206264.806) ** 2, "nominal pixel area in sr")
        err_h = wcs.copy()
        err_h["BUNIT"] = "MJy/sr"
        return fits.HDUList([
            primary,
            fits.ImageHDU(self.sci, sci_h, name="SCI"),
            fits.ImageHDU(self.err, err_h, name="ERR"),
            fits.ImageHDU(self.dq, wcs.copy(), name="DQ"),
            fits.ImageHDU(self.wmap, wcs.copy(), name="WMAP"),
        ])

    def writeto(self, path, *, overwrite=False):
        """Write the cube as a JWST-layout FITS file."""
        self.hdulist().writeto(path, overwrite=overwrite)
        return path


def _footprint(ny, nx, size, angle_deg):
    """Rotated square field of view, and each spaxel's distance to its edge (spaxels)."""
    y, x = np.mgrid[0:ny, 0:nx]
    yc, xc = (ny - 1) / 2, (nx - 1) / 2
    a = np.deg2rad(angle_deg)
    u = (x - xc) * np.cos(a) + (y - yc) * np.sin(a)
    v = -(x - xc) * np.sin(a) + (y - yc) * np.cos(a)
    half = size / 2
    inside = (np.abs(u) <= half) & (np.abs(v) <= half)
    dist = np.minimum(half - np.abs(u), half - np.abs(v))
    return inside, np.clip(dist, 0, None)


def _target_profile(kind, ny, nx, footprint, rng):
    """Surface-brightness map (peak 1) and velocity map (km/s) of the target."""
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    yc, xc = (ny - 1) / 2, (nx - 1) / 2
    if kind == "arc":
        # A lensed arc: a ridge along a circle centred off the field, crossing its edge.
        cy, cx = yc - 22.0, xc - 10.0
        r = np.hypot(y - cy, x - cx)
        theta = np.arctan2(y - cy, x - cx)
        along = np.exp(-0.5 * ((theta - 1.2) / 0.45) ** 2) + 0.35
        profile = along * np.exp(-0.5 * ((r - 27.0) / 2.2) ** 2)
        knots = np.exp(-0.5 * (((y - yc - 3) ** 2 + (x - xc + 2) ** 2) / 1.5**2))
        profile = profile + 1.5 * knots
        velocity = 160.0 * np.tanh((theta - 1.2) / 0.4)
    elif kind == "compact":
        r2 = (y - yc - 1.3) ** 2 + (x - xc + 0.7) ** 2
        profile = np.exp(-0.5 * r2 / 1.1**2) + 0.04 * np.exp(-np.sqrt(r2) / 3.0)
        velocity = 90.0 * np.tanh((x - xc) / 2.5)
    elif kind in ("faint", "continuum"):
        r = np.hypot((y - yc) / 1.3, x - xc + 1.5)
        profile = np.exp(-r / 5.0)
        velocity = 60.0 * np.tanh((y - yc) / 5.0)
    elif kind == "ringing":
        r2 = (y - yc - 0.35) ** 2 + (x - xc + 0.2) ** 2
        profile = np.exp(-0.5 * r2 / 0.8**2) + 0.02 * np.exp(-np.sqrt(r2) / 2.0)
        velocity = np.zeros_like(x)
    else:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    profile = np.where(footprint, profile / profile[footprint].max(), 0.0)
    return profile, velocity


def make_cube(kind="arc", *, shape=(1960, 43, 43), seed=0, n_artifacts=120,
              peak_snr=None, on_line_fraction=0.2, negative_fraction=0.15,
              wave_range=(1.095, 1.555), z=1.3293, fov_size=30, fov_angle=28.0,
              noise=0.5, edge_noise=2.0, line_sigma_kms=75.0, amp_range=(3.0, 3000.0),
              neighbour=None, separate=False, noise_correlation=0.0, err_scale=1.0,
              holes=0.0):
    """Build a seeded synthetic NIRSpec-like cube with injected artifacts.

    Parameters
    ----------
    kind : {"arc", "compact", "faint", "continuum", "ringing"}
        Target: an extended lensed arc reaching the field edge; a compact bright
        core; a faint diffuse target; a continuum-only target; an undersampled point
        source whose spaxel spectra show resampling "ringing".
    shape : tuple of int
        (planes, y, x).
    seed : int
        Seed of everything random.
    n_artifacts : int
        Number of artifacts injected.
    peak_snr : float, optional
        Per-plane S/N of the brightest voxel of the target (kind-dependent default).
    on_line_fraction : float
        Fraction of artifacts placed on the brightest line's peak planes inside the
        target (0 for continuum kinds).
    negative_fraction : float
        Fraction of artifacts with negative amplitude.
    wave_range : tuple of float
        First and last wavelength, microns.
    z : float
        Redshift of the line-emitting kinds.
    fov_size, fov_angle : float
        Side (spaxels) and rotation (degrees) of the square field of view.
    noise : float
        ERR at the centre of the field (MJy/sr).
    edge_noise : float
        ERR at the field edge is ``1 + edge_noise`` times the centre's.
    line_sigma_kms : float
        Line velocity dispersion (intrinsic and instrumental together).
    amp_range : tuple of float
        Artifact peak amplitudes are log-uniform in this range, in units of the
        voxel's ERR.
    neighbour : bool or dict, optional
        Add a bright compact neighbouring source at the same redshift ([O III]
        only): True, or a dict overriding ``offset`` (dy, dx from the centre,
        default (8, 9)), ``peak_snr`` (default 3x the target's), ``size`` (Gaussian
        sigma, spaxels, 1.3) and ``velocity`` (km/s, 150). Its noise-free signal is
        ``SyntheticCube.neighbour_model``; everything else equals the cube made
        without it.
    separate : bool
        Keep artifacts apart (none within 2 planes and 3 spaxels of another), as
        independent cosmic-ray hits almost always are. An artifact meant for the
        line core that finds no free place there in 25 draws is drawn, 25 times
        more, from the whole line (voxels where the brightest line is at least a
        tenth of its peak); one that finds none there either is drawn from the
        whole target, and one that finds no free place in 100 draws is placed
        anyway. The default (False) lets them
        pile up, e.g. several on the few brightest voxels of a compact line core.
    noise_correlation : float
        Gaussian sigma, in spaxels, of the kernel that correlates the noise between
        spaxels of a plane (0: independent noise). Each voxel's noise keeps the
        standard deviation ERR; two spaxels ``d`` apart correlate by about
        ``exp(-d**2 / (4 noise_correlation**2))`` (at 0.7: 0.58 for neighbours,
        and the noise of a sum over a wide aperture is 2.4 times what independent
        noise would give).
        The same random draws are used, so the artifacts equal those of the cube
        made without it.
    err_scale : float
        The ERR array written is this times the true noise (below 1: an ERR that
        underestimates the noise). Artifact amplitudes are drawn in units of the
        true noise.
    holes : float
        Fraction of the voxels inside the field left without data: SCI and ERR NaN,
        DQ DO_NOT_USE, as a pipeline leaves voxels no valid detector pixel reached
        (``clean`` and ``model`` keep their values there). Drawn from a random
        stream of their own, so everything else equals the cube made without them.

    Returns
    -------
    SyntheticCube
    """
    if not noise_correlation >= 0:
        raise ValueError(f"noise_correlation = {noise_correlation!r}: expected a Gaussian "
                         "sigma in spaxels, 0 or more")
    if not err_scale > 0:
        raise ValueError(f"err_scale = {err_scale!r}: expected a factor above 0")
    if not 0 <= holes < 1:
        raise ValueError(f"holes = {holes!r}: expected a fraction of the voxels, 0 to below 1")
    rng = np.random.default_rng(seed)
    nw, ny, nx = shape
    wave = np.linspace(wave_range[0], wave_range[1], nw)
    footprint, dist = _footprint(ny, nx, fov_size, fov_angle)
    edge = 1.0 + edge_noise * np.exp(-dist / 1.5)
    wmid, wspan = wave.mean(), np.ptp(wave)
    spectral_noise = 1.0 + 0.3 * ((wave - wmid) / (wspan / 2)) ** 2
    err = noise * spectral_noise[:, None, None] * edge[None]

    profile, velocity = _target_profile(kind, ny, nx, footprint, rng)
    default_snr = {"arc": 150.0, "compact": 1500.0, "faint": 4.0, "continuum": 4.0,
                   "ringing": 60.0}
    peak = (default_snr[kind] if peak_snr is None else peak_snr) * noise
    model = np.zeros(shape)
    line = None
    line_model = None
    if kind in ("arc", "compact", "faint"):
        line = "[O III]5008"
        vel = velocity[None]
        for name, ratio in _LINE_RATIOS.items():
            centre = LINES[name] * (1 + z) * 1e-4
            if not (wave[0] <= centre <= wave[-1]):
                continue
            lam = centre * (1 + vel / C_KMS)
            sig = centre * line_sigma_kms / C_KMS
            component = ratio * peak * profile[None] * np.exp(
                -0.5 * ((wave[:, None, None] - lam) / sig) ** 2)
            model += component
            if name == line:
                line_model = component
        model += 0.01 * peak * profile[None] * (wave[:, None, None] / wmid)
    elif kind == "continuum":
        slope = (wave / wmid) ** -1.5
        model += peak * profile[None] * slope[:, None, None]
    else:  # ringing: undersampled PSF resampled onto the cube grid beats along wavelength
        y, x = np.mgrid[0:ny, 0:nx]
        phase = 2 * np.pi * (0.37 * y + 0.61 * x)
        period = 14.0 + 6.0 * (wave - wave[0]) / wspan  # planes
        cycles = np.cumsum(1.0 / period)
        ring = 1 + 0.25 * np.sin(2 * np.pi * cycles[:, None, None] + phase[None])
        model += peak * profile[None] * ring * (wave[:, None, None] / wmid) ** -1
    neighbour_model = None
    if neighbour:
        # A compact companion at the same redshift, offset in position and velocity;
        # deterministic, so the target, noise and artifacts are those of the cube
        # made without it.
        nb = {"offset": (8.0, 9.0), "peak_snr": 3 * peak / noise,
              "size": 1.3, "velocity": 150.0, **(neighbour if isinstance(neighbour, dict)
                                                  else {})}
        yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
        r2 = ((yy - (ny - 1) / 2 - nb["offset"][0]) ** 2
              + (xx - (nx - 1) / 2 - nb["offset"][1]) ** 2)
        nb_profile = np.where(footprint, np.exp(-0.5 * r2 / nb["size"] ** 2)
                              + 0.03 * np.exp(-np.sqrt(r2) / 2.5), 0.0)
        centre = LINES["[O III]5008"] * (1 + z) * (1 + nb["velocity"] / C_KMS) * 1e-4
        sig = centre * line_sigma_kms / C_KMS
        neighbour_model = (nb["peak_snr"] * noise * nb_profile[None]
                           * np.exp(-0.5 * ((wave[:, None, None] - centre) / sig) ** 2))
        model += neighbour_model
        neighbour_model[:, ~footprint] = np.nan
    model[:, ~footprint] = np.nan
    err[:, ~footprint] = np.nan

    clean = model + _correlated(rng.normal(size=shape), noise_correlation) * err
    n_on_line = int(round(n_artifacts * on_line_fraction)) if line is not None else 0
    core_planes = on_line_voxels = None
    if line is not None:
        centre = LINES[line] * (1 + z) * 1e-4
        core_planes = np.flatnonzero(np.abs(wave - centre) <= centre * 150 / C_KMS)
        # kept apart, a few artifacts fill the small brightest core; the others then
        # go elsewhere on the line: voxels where it is at least a tenth of its peak
        if separate and line_model is not None:
            on_line_voxels = np.argwhere(line_model >= 0.1 * line_model.max())
    artifacts_cube, artifacts = inject_artifacts(
        rng, err, footprint, n_artifacts=n_artifacts, n_on_signal=n_on_line,
        core_spaxels=np.argwhere(profile >= 0.5 * profile.max()), core_planes=core_planes,
        signal_voxels=on_line_voxels, amp_range=amp_range,
        negative_fraction=negative_fraction, separate=separate)

    dq = np.zeros(shape, dtype=np.uint32)
    dq[:, ~footprint] = DO_NOT_USE | NON_SCIENCE
    wmap = np.broadcast_to(np.where(footprint, 1.0 / edge**2, 0.0), shape)
    sci = (clean + artifacts_cube).astype(np.float32)
    err_out = (err_scale * err).astype(np.float32)
    if holes:
        hole = (np.random.default_rng([seed, 1]).random(shape) < holes) & footprint[None]
        sci[hole] = np.nan
        err_out[hole] = np.nan
        dq[hole] |= DO_NOT_USE
    return SyntheticCube(
        sci=sci, err=err_out, clean=clean.astype(np.float32),
        model=model.astype(np.float32), dq=dq, wmap=wmap.astype(np.float32),
        wavelength=wave, footprint=footprint, artifacts=artifacts, z=z, line=line,
        kind=kind,
        neighbour_model=None if neighbour_model is None else neighbour_model.astype(np.float32),
        err_scale=float(err_scale),
    )


def inject_artifacts(rng, err, footprint, *, n_artifacts, n_on_signal=0, core_spaxels=None,
                     core_planes=None, signal_voxels=None, amp_range=(3.0, 3000.0),
                     negative_fraction=0.15, separate=False):
    """Cosmic-ray-like residuals: 1-3 planes by 1-4 adjacent spaxels each.

    Each artifact has a peak amplitude drawn log-uniformly from ``amp_range`` in
    units of the ERR of the voxels it touches, a sign (negative with probability
    ``negative_fraction``), a profile over its planes (0.4 : 1 : 0.35 for three,
    1 : 0.45 for two) and weights 0.2-0.6 on the spaxels besides the first.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws everything (the same sequence of draws for the same arguments).
    err : ndarray, shape (planes, y, x)
        The noise the amplitudes are scaled by.
    footprint : ndarray of bool, shape (y, x)
        Spaxels that may be hit.
    n_artifacts : int
    n_on_signal : int
        The first ``n_on_signal`` artifacts start on a spaxel of ``core_spaxels``
        at a plane of ``core_planes`` (the brightest signal; an emission line's
        peak planes).
    core_spaxels : ndarray of int, shape (n, 2), optional
    core_planes : ndarray of int, optional
    signal_voxels : ndarray of int, shape (n, 3), optional
        With ``separate``, where an on-signal artifact that finds no free place in
        the core in 25 draws is drawn from, 25 times more ((plane, y, x) rows, in
        the footprint, as ``core_spaxels`` must be); one that
        finds none there either is drawn from the whole footprint, and one that
        finds no free place in 100 draws is placed anyway.
    amp_range : tuple of float
    negative_fraction : float
    separate : bool
        Keep artifacts apart (none within 2 planes and 3 spaxels of another).

    Returns
    -------
    values : ndarray, shape of ``err``
        The sum of the artifacts.
    artifacts : list of Artifact
    """
    shape = err.shape
    nw, ny, nx = shape
    values = np.zeros(shape)
    artifacts = []
    inside = np.argwhere(footprint)
    neighbours = np.array([(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, 1)])
    occupied = np.zeros(shape, dtype=bool) if separate else None
    have_core = core_planes is not None and len(core_planes) > 0
    for i in range(n_artifacts):
        on_signal = i < n_on_signal and have_core
        for attempt in range(100 if separate else 1):
            if attempt == 50:
                on_signal = False  # no free place on the signal
            if on_signal and attempt >= 25:
                k0, y0, x0 = (int(v) for v in signal_voxels[rng.integers(len(signal_voxels))])
            elif on_signal:
                y0, x0 = core_spaxels[rng.integers(len(core_spaxels))]
                k0 = int(rng.choice(core_planes))
            else:
                y0, x0 = inside[rng.integers(len(inside))]
                k0 = int(rng.integers(1, nw - 3))
            if not separate:
                break
            box = (slice(max(k0 - 2, 0), k0 + 5), slice(max(y0 - 3, 0), y0 + 4),
                   slice(max(x0 - 3, 0), x0 + 4))
            if not occupied[box].any():
                break
        if separate:
            occupied[k0:k0 + 3, max(y0 - 1, 0):y0 + 2, max(x0 - 1, 0):x0 + 2] = True
        n_planes = int(rng.integers(1, 4))
        n_spax = int(rng.integers(1, 5))
        plane_weights = {1: [1.0], 2: [1.0, 0.45], 3: [0.4, 1.0, 0.35]}[n_planes]
        spax = [(y0, x0)]
        for dy, dx in rng.permutation(neighbours)[: n_spax - 1]:
            yy, xx = y0 + dy, x0 + dx
            if 0 <= yy < ny and 0 <= xx < nx and footprint[yy, xx]:
                spax.append((yy, xx))
        spax_weights = [1.0] + list(rng.uniform(0.2, 0.6, len(spax) - 1))
        amp = float(np.exp(rng.uniform(np.log(amp_range[0]), np.log(amp_range[1]))))
        sign = -1.0 if rng.random() < negative_fraction else 1.0
        ks, ys, xs, vals = [], [], [], []
        for j, pw in enumerate(plane_weights):
            k = min(k0 + j, nw - 1)
            for (yy, xx), sw in zip(spax, spax_weights, strict=True):
                ks.append(k)
                ys.append(yy)
                xs.append(xx)
                vals.append(sign * amp * pw * sw * err[k, yy, xx])
        art = Artifact(np.array(ks), np.array(ys), np.array(xs), np.array(vals),
                       peak_sigma=sign * amp, on_line=on_signal)
        np.add.at(values, art.voxels, art.values)
        artifacts.append(art)
    return values, artifacts


def _correlated(white, sigma):
    """Unit-variance noise ``white`` (planes, y, x) smoothed over each plane by a
    Gaussian of ``sigma`` spaxels and scaled back to unit variance (periodic
    edges, so every spaxel keeps it exactly); ``white`` itself for ``sigma`` 0."""
    if sigma == 0:
        return white
    # the smoothing kernel's weights along one axis; the 2-D kernel is their outer
    # product, so its sum of squares is the square of theirs
    size = 2 * int(np.ceil(4 * sigma)) + 1
    impulse = np.zeros(size)
    impulse[size // 2] = 1.0
    weights = ndimage.gaussian_filter1d(impulse, sigma, mode="constant")
    smoothed = ndimage.gaussian_filter(white, (0, sigma, sigma), mode="wrap")
    return smoothed / np.sum(weights ** 2)


def score_flags(cube, flags, *, strong=10.0):
    """How many injected artifacts a flag cube caught, and how many clean voxels it flagged.

    An artifact counts as caught when its peak voxel is flagged; it is "strong"
    when its peak exceeds ``strong`` times the voxel's ERR.

    Returns
    -------
    dict
        ``n_artifacts``, ``caught``, ``n_strong``, ``strong_caught``,
        ``false_flags`` (flagged voxels no artifact touched).
    """
    caught = strong_caught = n_strong = 0
    for art in cube.artifacts:
        i = int(np.argmax(np.abs(art.values)))
        hit = bool(flags[art.planes[i], art.ys[i], art.xs[i]])
        caught += hit
        if abs(art.peak_sigma) > strong:
            n_strong += 1
            strong_caught += hit
    false_flags = int((flags & ~cube.artifact_mask).sum())
    return {"n_artifacts": len(cube.artifacts), "caught": caught, "n_strong": n_strong,
            "strong_caught": strong_caught, "false_flags": false_flags}
