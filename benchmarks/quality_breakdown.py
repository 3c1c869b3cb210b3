"""What lies behind robust mode's totals in ``quality.py``, artifact by artifact.

``quality.py`` prints one row of totals per cube. This script lists, for the same
cubes (seed 0 of every kind and the four variants), what makes up the robust
row where it misses an issue-5 target:

* every strong artifact (injected peak > 10 sigma) that robust missed or left
  beyond 10 sigma, voxel by voxel: the injected amplitude and the noise-free
  signal there (both in units of the noise), whether the voxel was flagged, and
  what is left after cleaning; weaker artifacts left beyond 5 sigma, one line each;
* every voxel flagged on real signal (noise-free S/N > 10) where nothing was
  injected, with its replacement error and the nearest artifact;
* the brightest line's flux error over the target split into what the replaced
  artifact voxels, the unflagged artifact voxels and the flags without an
  artifact contribute, beside the oracle's floor (the lost voxels' own noise);
* a summary per cube: the strong artifacts missed or left, by whether their
  peak voxel sits on signal above 10 sigma, and by how many spaxels they span.

For each strong artifact missed or left it also shows robust mode's first
prediction at its voxels (the neighbour-basis fit before any flag, with its
uncertainty) twice: on the cube as injected, and on the artifact-free cube with
the same layer map. A missed or badly replaced artifact whose peak the
artifact-free prediction would find beyond 5 sigma (its injected amplitude over
that prediction's stated uncertainty and the noise) is *hidden by itself*: its
other planes and spaxels spoil the fits that judge it. One that the
artifact-free prediction could not find either lies *below the model's
precision* there.

Everything is in units of the true noise, as in ``quality.py``.

Run: ``.venv/bin/python benchmarks/quality_breakdown.py [CUBE ...]`` (about 10 s),
where CUBE is a label of ``quality.py``'s target list ("arc seed 0", "compact
stress", ...); without one, every cube whose targets robust misses. With
``--unseen``, the cubes of ``quality_unseen.py`` instead ("compact seed 4 60km/s",
...; all 75 cubes in about 30 s).
"""

import argparse
import sys

import numpy as np
from quality import PHYSICAL, VARIANTS, layer_map_for, make_kind, metrics, targets
from quality_unseen import SETTINGS as UNSEEN

from layerclip import robust as robust_module
from layerclip import robust_passes
from layerclip.clip import clip_cube
from layerclip.simulate import KINDS

# S/N of the noise-free signal above which a voxel is "on signal" (quality.py's
# flags-on-signal column uses the same bound).
ON_SIGNAL = 10.0
BELOW = "below the model's precision"


def cube_settings(unseen=False):
    """``{label: (kind, make_cube settings)}`` for every cube of ``quality.py``, or
    with ``unseen`` of ``quality_unseen.py`` (labels as in its target list)."""
    if unseen:
        return {f"{kind} {key}": (kind, dict(settings))
                for key, settings in UNSEEN.items() for kind in KINDS}
    out = {f"{kind} seed 0": (kind, {"seed": 0, **PHYSICAL}) for kind in KINDS}
    for key, _, settings in VARIANTS:
        for kind in KINDS:
            out[f"{kind} {key}"] = (kind, dict(settings))
    return out


def first_pass(sci, err, lm):
    """Robust mode's result on a cube, and its first-pass prediction and the
    prediction's standard deviation for every voxel (NaN where the screen settled a
    voxel without a fit).

    Robust mode is run on the whole cube in one block, and its first call of the
    prediction step (every candidate, before any flag) is recorded.
    """
    calls = []
    original = robust_passes._predict

    def recording(y, e, usable, neighbours, ks, ss, **kwargs):
        out = original(y, e, usable, neighbours, ks, ss, **kwargs)
        if not calls:
            calls.append((ks.copy(), ss.copy(), out[0].copy(), out[1].copy()))
        return out

    robust_passes._predict = recording
    try:
        result = clip_cube(sci, err, lm, method="robust", block_planes=sci.shape[0])
    finally:
        robust_passes._predict = original
    ks, ss, value, variance = calls[0]
    index, _ = robust_module.neighbour_table(lm)
    nw = sci.shape[0]
    pred = np.full((nw, lm.size), np.nan)
    sd = np.full((nw, lm.size), np.nan)
    pred[ks, index[ss]] = value
    sd[ks, index[ss]] = np.sqrt(variance)
    return result, (pred.reshape(sci.shape), sd.reshape(sci.shape))


def calibration(cube, err, pred, sd):
    """One line on how the first predictions on the artifact-free cube do on signal.

    Over the fitted voxels whose noise-free signal exceeds ON_SIGNAL: the median
    error of the prediction against the noise-free value and the median of its
    stated uncertainty (both in units of the noise), the spread of the normalised
    residual (1 where the uncertainty is right, below 1 where it is cautious) and
    how many voxels it puts beyond 5 sigma.
    """
    with np.errstate(invalid="ignore"):
        on = np.isfinite(pred) & (cube.model / err > ON_SIGNAL)
    if not on.any():
        return (f"  first predictions on the artifact-free cube: none on signal > "
                f"{ON_SIGNAL:.0f} sigma")
    miss = (pred[on] - cube.model[on]) / err[on]
    stated = sd[on] / err[on]
    z = (cube.clean[on] - pred[on]) / np.hypot(err[on], sd[on])
    return (f"  first predictions on the artifact-free cube, {int(on.sum())} voxels on signal "
            f"> {ON_SIGNAL:.0f} sigma: median miss {np.median(np.abs(miss)):.2f}, median "
            f"stated uncertainty {np.median(stated):.2f}, spread of z {np.std(z):.2f}, "
            f"beyond 5 sigma {int(np.sum(np.abs(z) > 5))}")


def _fmt_voxel(cube, err, flags, after, k, y, x, injected, first):
    signal = cube.model[k, y, x] / err[k, y, x]
    left = (after[k, y, x] - float(cube.clean[k, y, x])) / err[k, y, x]
    flagged = "yes" if flags[k, y, x] else "no"
    text = ""
    for label, (pred, sd) in zip(("injected", "artifact-free"), first, strict=True):
        if np.isfinite(pred):
            text += (f"  {label}: {(pred - cube.model[k, y, x]) / err[k, y, x]:+7.1f}"
                     f" +- {sd / err[k, y, x]:5.1f}")
        else:
            text += f"  {label}: {'screen':>15s}"
    return (f"    ({k:4d},{y:2d},{x:2d}) injected {injected:+9.1f}  signal {signal:7.1f}"
            f"  flagged {flagged:3s}  left {left:+8.1f} |{text}")


def artifact_report(cube, err, flags, after, injected, clean_cube):
    """Lines describing the artifacts robust left or missed, and the summary counts.

    ``injected`` and ``clean_cube`` are the predictions and uncertainties of
    :func:`first_pass` on the cube as injected and on the artifact-free cube.
    """
    lines = []
    counts = {"strong on signal": 0, "strong faint": 0, "weak left > 5": 0,
              "hidden by itself": 0, BELOW: 0}
    spans = {}
    clean = cube.clean.astype(float)
    for i, art in enumerate(cube.artifacts):
        vox = art.voxels
        held = np.isfinite(cube.sci[vox])
        inj = np.where(held, art.values / err[vox], 0.0)
        left = np.where(held, (after[vox] - clean[vox]) / err[vox], 0.0)
        left = np.where(np.isfinite(left), left, 0.0)
        strong = abs(art.peak_sigma) > 10
        missed = strong and bool(np.any((np.abs(inj) > 10) & ~flags[vox]))
        bad = missed or (strong and bool(np.any(np.abs(left) > 10)))
        peak = int(np.argmax(np.abs(inj)))
        signal = cube.model[vox][peak] / err[vox][peak]
        n_spax = len({(int(a), int(b)) for a, b in zip(vox[1], vox[2], strict=True)})
        n_planes = len(set(vox[0].tolist()))
        if bad:
            counts["strong on signal" if signal > ON_SIGNAL else "strong faint"] += 1
            spans[n_spax] = spans.get(n_spax, 0) + 1
            # would the artifact-free prediction find the peak voxel beyond 5 sigma?
            sd_clean = clean_cube[1][vox][peak] / err[vox][peak]
            seen = np.isfinite(sd_clean) and abs(inj[peak]) / np.hypot(1.0, sd_clean) > 5
            kind = "hidden by itself" if seen else BELOW
            counts[kind] += 1
            lines.append(f"  artifact {i}: peak {art.peak_sigma:+.0f} sigma over {n_planes} "
                         f"plane(s) x {n_spax} spaxel(s), peak voxel at signal {signal:.0f} "
                         f"sigma: {'missed' if missed else 'flagged, badly replaced'}; {kind}")
            for j, (k, y, x) in enumerate(zip(*vox, strict=True)):
                first = [(pred[k, y, x], sd[k, y, x]) for pred, sd in (injected, clean_cube)]
                lines.append(_fmt_voxel(cube, err, flags, after, k, y, x, inj[j], first))
        elif np.any(np.abs(left) > 5):
            counts["weak left > 5"] += 1
            lines.append(f"  artifact {i}: peak {art.peak_sigma:+.1f} sigma, {n_planes} plane(s) "
                         f"x {n_spax} spaxel(s), signal {signal:.1f}: left up to "
                         f"{np.max(np.abs(left)):.1f} sigma ({int(flags[vox].sum())} of "
                         f"{len(vox[0])} voxels flagged)")
    return lines, counts, spans


def signal_flag_report(cube, err, flags, after):
    """Lines for the voxels flagged on signal above ON_SIGNAL where nothing was injected,
    and for each of them its distance to the nearest artifact (voxels; None without
    one), that artifact's peak (sigma) and the replacement's error (in the noise)."""
    with np.errstate(invalid="ignore"):
        wrong = flags & ~cube.artifact_mask & (cube.model / err > ON_SIGNAL)
    lines = []
    found = []
    starts = [np.stack(a.voxels, axis=1) for a in cube.artifacts]
    for k, y, x in np.argwhere(wrong):
        # the nearest artifact voxel (planes and spaxels counted alike)
        dist = [int(np.min(np.max(np.abs(s - (k, y, x)), axis=1))) for s in starts]
        near = int(np.argmin(dist)) if dist else -1
        where = (f"nearest artifact {near} ({cube.artifacts[near].peak_sigma:+.0f} sigma) "
                 f"{dist[near]} voxel(s) away") if near >= 0 else "no artifact"
        signal = cube.model[k, y, x] / err[k, y, x]
        error = (after[k, y, x] - cube.clean[k, y, x]) / err[k, y, x]
        lines.append(f"  ({k:4d},{y:2d},{x:2d}) signal {signal:6.1f}  replaced with error "
                     f"{error:+7.1f}  {where}")
        found.append((dist[near] if near >= 0 else None,
                      abs(cube.artifacts[near].peak_sigma) if near >= 0 else 0.0, abs(error)))
    return lines, found


def flux_split(cube, lm, planes, flags, after):
    """The line-flux error (percent of the artifact-free flux) by where it comes from."""
    target = np.zeros(cube.sci.shape, bool)
    target[planes] = (lm > 0)[None]
    target &= np.isfinite(cube.sci) & np.isfinite(cube.clean)
    clean = cube.clean.astype(float)
    diff = np.where(np.isfinite(after), after - clean, 0.0)
    total = clean[target].sum()
    art = cube.artifact_mask
    parts = {"replaced artifact voxels": art & flags, "unflagged artifact voxels": art & ~flags,
             "flags without an artifact": ~art & flags}
    out = {name: 100 * diff[mask & target].sum() / total for name, mask in parts.items()}
    floor = 100 * (np.where(art, cube.model, clean) - clean)[target].sum() / total
    return out, floor


def report(label, kind, settings):
    """The lines describing robust mode on one cube, and the targets it misses there."""
    cube = make_kind(kind, **settings)
    lm, planes = layer_map_for(cube)
    robust, injected = first_pass(cube.sci, cube.err, lm)
    _, clean_cube = first_pass(cube.clean.astype(cube.sci.dtype), cube.err, lm)
    paper = clip_cube(cube.sci, cube.err, lm, method="paper")
    oracle_sci = np.where(cube.artifact_mask, cube.model, cube.sci)
    # (times are not measured here: quality.py does that)
    results = {"robust": (metrics(cube, lm, planes, robust.sci, robust.flags), 0.0),
               "paper": (metrics(cube, lm, planes, paper.sci, paper.flags), 0.0),
               "oracle": (metrics(cube, lm, planes, oracle_sci, cube.artifact_mask), 0.0)}
    fails = targets(results)
    err = cube.err.astype(float) / cube.err_scale
    after = np.asarray(robust.sci, float)
    art_lines, counts, spans = artifact_report(cube, err, robust.flags, after, injected,
                                               clean_cube)
    flag_lines, flag_found = signal_flag_report(cube, err, robust.flags, after)
    split, floor = flux_split(cube, lm, planes, robust.flags, after)
    m = results["robust"][0]
    span_text = ", ".join(f"{n} spaxel(s): {c}" for n, c in sorted(spans.items())) or "none"
    lines = [
        f"== {label}: targets missed: {', '.join(fails) if fails else 'none'}",
        f"  robust: strong missed {m['strong_missed']}, strong left {m['strong_left']}, "
        f"left > 5 {m['all_left']}, flags on signal {m['on_signal']}, flux "
        f"{m['flux_pct']:+.3f}%, worst spaxel {m['worst']:.2f}",
        f"  strong artifacts missed or left: {counts['strong on signal']} on signal > "
        f"{ON_SIGNAL:.0f} sigma, {counts['strong faint']} faint; by span: {span_text}; "
        f"weaker ones left > 5 sigma: {counts['weak left > 5']}",
        f"  of those strong ones, hidden by themselves: {counts['hidden by itself']}, below "
        f"the model's precision: {counts[BELOW]}",
        "  flux error by source: " + ", ".join(f"{name} {pct:+.3f}%"
                                               for name, pct in split.items())
        + f"; oracle floor {floor:+.3f}%",
        calibration(cube, err, *clean_cube),
        *art_lines]
    if flag_lines:
        lines += ["  flags on signal where nothing was injected:", *flag_lines]
    return lines, fails, (counts, spans, flag_found)


def totals_lines(summaries):
    """Lines summing the per-cube summaries of :func:`report` over the cubes shown."""
    counts, spans, found = {}, {}, []
    for c, s, f in summaries:
        for key, n in c.items():
            counts[key] = counts.get(key, 0) + n
        for key, n in s.items():
            spans[key] = spans.get(key, 0) + n
        found += f
    span_text = ", ".join(f"{n} spaxel(s): {c}" for n, c in sorted(spans.items())) or "none"
    lines = [f"totals over the {len(summaries)} cube(s) shown:",
             f"  strong artifacts missed or left: {counts.get('strong on signal', 0)} on signal "
             f"> {ON_SIGNAL:.0f} sigma, {counts.get('strong faint', 0)} faint; by span: "
             f"{span_text}; hidden by themselves {counts.get('hidden by itself', 0)}, below "
             f"the model's precision {counts.get(BELOW, 0)}",
             f"  flags on signal where nothing was injected: {len(found)}"]
    if found:
        near = sum(d is not None and d <= 2 for d, _, _ in found)
        strong = sum(peak >= 300 for _, peak, _ in found)
        errors = np.array([e for _, _, e in found])
        lines[-1] += (f"; within 2 voxels of an artifact {near}, next to one of 300 sigma or "
                      f"more {strong}; replaced more than 10 sigma off {int(np.sum(errors > 10))}"
                      f" (median error {np.median(errors):.1f}, largest {errors.max():.1f})")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cubes", nargs="*", help="labels as in quality.py's target list "
                        "(with --unseen, as in quality_unseen.py's)")
    parser.add_argument("--unseen", action="store_true",
                        help="the cubes of quality_unseen.py instead of quality.py's")
    args = parser.parse_args(argv)
    every = cube_settings(args.unseen)
    unknown = [c for c in args.cubes if c not in every]
    if unknown:
        parser.error(f"unknown cube label(s) {unknown}; known: {', '.join(every)}")
    chosen = args.cubes or list(every)
    shown = []
    for label in chosen:
        lines, fails, summary = report(label, *every[label])
        # (without labels, only the cubes where robust misses a target)
        if args.cubes or fails:
            print("\n".join(lines) + "\n")
            shown.append(summary)
    print("\n".join(totals_lines(shown)))
    print(f"{len(shown)} of {len(chosen)} cube(s) shown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
