"""Scale: a MUSE-size cube out of core, NIRSpec-size vs MUSE-size rates, batch speed-up.

1. Writes a MUSE-size cube (3681 x 320 x 320 float32 DATA + STAT variance, the
   MUSE file layout, NaN outside a round field, a compact emission-line target,
   injected single-voxel outliers) to disk block by block, then cleans it with
   ``clean_file`` in a child process and reports the child's peak resident
   memory (``getrusage`` ru_maxrss) and the rate in voxels per second.
2. Cleans a NIRSpec-size synthetic cube (1960 x 43 x 43, JWST s3d layout) the
   same way and prints the ratio of the two rates.
3. Cleans a batch of 8 NIRSpec-size cubes on a local Dask cluster of 1 and of 2
   worker processes and prints the speed-up.

Usage: ``python benchmarks/bench_scale.py [--workdir DIR] [--planes N] [--keep]``
(``--planes`` shrinks the MUSE-size cube for a quick run). Needs about 7 GB of
free disk in the work folder for the full size.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

MUSE_SHAPE = (3681, 320, 320)
NIRSPEC_SHAPE = (1960, 43, 43)
LINE_PLANE = 2000
BLOCK = 128


def _image_header(shape, name, bunit):
    nw, ny, nx = shape
    hdu = fits.ImageHDU(data=np.zeros((1, 1, 1), np.float32), name=name)
    h = hdu.header
    h["NAXIS1"], h["NAXIS2"], h["NAXIS3"] = nx, ny, nw
    h["BUNIT"] = bunit
    h["CTYPE1"], h["CTYPE2"], h["CTYPE3"] = "RA---TAN", "DEC--TAN", "AWAV"
    h["CUNIT1"], h["CUNIT2"], h["CUNIT3"] = "deg", "deg", "Angstrom"
    h["CRPIX1"], h["CRPIX2"], h["CRPIX3"] = nx / 2, ny / 2, 1.0
    h["CRVAL1"], h["CRVAL2"], h["CRVAL3"] = 53.16, -27.78, 4750.0
    h["CD1_1"], h["CD2_2"], h["CD3_3"] = -0.2 / 3600, 0.2 / 3600, 1.25
    h["CD1_2"], h["CD2_1"] = 0.0, 0.0
    return h.tostring().encode("ascii")


def write_muse_like(path, shape=MUSE_SHAPE, *, seed=2024, n_outliers_per_block=40):
    """Write a MUSE-layout cube block by block (bounded memory); return outlier count."""
    nw, ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    r = np.hypot(yy - ny / 2, xx - nx / 2)
    field = r < 0.47 * min(ny, nx)
    noise = (1.0 + 0.5 * r / r.max()).astype(np.float32)
    blob = np.exp(-0.5 * r**2 / 4.0**2).astype(np.float32)
    line_plane = min(LINE_PLANE, nw // 2)
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "ESO-VLT-U4"
    primary.header["INSTRUME"] = "MUSE"
    primary.header["OBJECT"] = "LAYERCLIP-BENCH"
    n_out = 0
    with open(path, "wb") as f:
        f.write(primary.header.tostring().encode("ascii"))
        for name, bunit in (("DATA", "10**-20 erg/s/cm2/Angstrom"),
                            ("STAT", "(10**-20 erg/s/cm2/Angstrom)**2")):
            rng = np.random.default_rng(seed)  # same stream: DATA and STAT stay aligned
            f.write(_image_header(shape, name, bunit))
            for k0 in range(0, nw, BLOCK):
                k1 = min(k0 + BLOCK, nw)
                planes = np.arange(k0, k1, dtype=np.float32)[:, None, None]
                if name == "DATA":
                    line = 40.0 * np.exp(-0.5 * ((planes - line_plane) / 2.5) ** 2)
                    block = rng.standard_normal((k1 - k0, ny, nx), dtype=np.float32)
                    block *= noise
                    block += blob * (0.3 + line)
                    ks = rng.integers(0, k1 - k0, n_outliers_per_block)
                    ys = rng.integers(0, ny, n_outliers_per_block)
                    xs = rng.integers(0, nx, n_outliers_per_block)
                    block[ks, ys, xs] += 60.0 * noise[ys, xs]
                    n_out += int(field[ys, xs].sum())
                    block[:, ~field] = np.nan
                else:
                    rng.standard_normal((k1 - k0, ny, nx), dtype=np.float32)
                    rng.integers(0, k1 - k0, n_outliers_per_block)
                    rng.integers(0, ny, n_outliers_per_block)
                    rng.integers(0, nx, n_outliers_per_block)
                    block = np.broadcast_to(noise * noise, (k1 - k0, ny, nx)).copy()
                    block[:, ~field] = np.nan
                f.write(block.astype(">f4").tobytes())
            f.write(b"\0" * (-(nw * ny * nx * 4) % 2880))
    return n_out, 4750.0e-4 + 1.25e-4 * line_plane


_CHILD = """
import json, resource, sys, time
from layerclip.pipeline import clean_file
args = json.loads(sys.argv[1])
t = time.perf_counter()
result, info = clean_file(args["input"], args["output"], **args["options"])
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "n_flagged": result.n_flagged,
                  "kind": type(result).__name__,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def clean_in_child(input_path, output_path, **options):
    """Run clean_file in a fresh Python; return its timing and peak RSS."""
    arg = json.dumps({"input": str(input_path), "output": str(output_path),
                      "options": options})
    done = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"child failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def nirspec_cubes(folder, n, *, seed0=100):
    from layerclip.simulate import make_cube

    out = []
    for i in range(n):
        cube = make_cube("arc", shape=NIRSPEC_SHAPE, seed=seed0 + i, n_artifacts=120)
        path = folder / f"nirspec_{i}_s3d.fits"
        cube.writeto(path)
        out.append((path, cube.line, cube.z))
    return out


def batch_time(cubes, folder, workers, method):
    from distributed import Client, LocalCluster

    from layerclip.batch import Job, run_batch

    folder.mkdir(exist_ok=True)
    jobs = [Job(p.stem, str(p), str(folder / f"{p.stem}_clean.fits"),
                {"line": line, "z": z, "method": method}) for p, line, z in cubes]
    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        startup = time.perf_counter() - t0
        client.run(lambda: __import__("layerclip.pipeline"))  # warm imports, not timed
        cpu0 = sum(client.run(_cpu_seconds).values())
        t = time.perf_counter()
        results = run_batch(jobs, client=client)
        seconds = time.perf_counter() - t
        cpu = sum(client.run(_cpu_seconds).values()) - cpu0
    failed = [r for r in results if r.status != "done"]
    if failed:
        raise SystemExit(f"batch failures: {[(r.name, r.error) for r in failed]}")
    return seconds, startup, cpu


def _cpu_seconds():
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="folder for the cubes (default: temp)")
    parser.add_argument("--planes", type=int, default=MUSE_SHAPE[0],
                        help=f"planes of the MUSE-size cube (default {MUSE_SHAPE[0]})")
    parser.add_argument("--batch", type=int, default=8, help="cubes in the batch (default 8)")
    parser.add_argument("--method", default="paper", help="clipping method (default paper)")
    parser.add_argument("--skip-muse", action="store_true",
                        help="only the NIRSpec-size clean and the batch (no rate ratio)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="layerclip-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = (args.planes, *MUSE_SHAPE[1:])
    n_vox = int(np.prod(shape))
    print(f"work folder {work}; {os.cpu_count()} CPUs; method {args.method}")
    muse_rate = None
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes skew the timings)")
    try:
        if not args.skip_muse:
            muse_rate = _muse_part(work, shape, n_vox, args.method)
        cubes = nirspec_cubes(work, max(args.batch, 1))
        path, line, z = cubes[0]
        n_nrs = int(np.prod(NIRSPEC_SHAPE))
        res = clean_in_child(path, work / "nrs_clean.fits", line=line, z=z, method=args.method)
        nrs_rate = n_nrs / res["seconds"]
        print(f"NIRSpec-size clean ({res['kind']}, {NIRSPEC_SHAPE[0]}x{NIRSPEC_SHAPE[1]}x"
              f"{NIRSPEC_SHAPE[2]}): {res['seconds']:.2f} s, {nrs_rate / 1e6:.2f} Mvoxel/s, "
              f"peak RSS {res['maxrss_mb']:.0f} MB")
        res_s = clean_in_child(path, work / "nrs_clean_stream.fits", line=line, z=z,
                               block_planes=64, method=args.method)
        print(f"NIRSpec-size clean out of core ({res_s['kind']}, 64-plane blocks): "
              f"{res_s['seconds']:.2f} s, {n_nrs / res_s['seconds'] / 1e6:.2f} Mvoxel/s")
        if muse_rate is not None:
            ratio = nrs_rate / muse_rate
            print(f"rate ratio NIRSpec-size / MUSE-size: {ratio:.2f} "
                  f"({'within' if ratio <= 1.5 else 'NOT within'} 1.5)")

        t1, s1, c1 = batch_time(cubes, work / "batch1", 1, args.method)
        t2, s2, c2 = batch_time(cubes, work / "batch2", 2, args.method)
        print(f"batch of {len(cubes)} NIRSpec-size cubes: 1 worker {t1:.1f} s, 2 workers "
              f"{t2:.1f} s, speed-up {t1 / t2:.2f}x (cluster start-up {s1:.1f} s / {s2:.1f} s, "
              "not included)")
        print(f"  worker CPU time: 1 worker {c1:.1f} s ({c1 / t1:.2f} cores busy), 2 workers "
              f"{c2:.1f} s ({c2 / t2:.2f} cores busy)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _muse_part(work, shape, n_vox, method):
    """Write the MUSE-size cube, clean it in a child process, print and return the rate."""
    muse = work / "muse_like.fits"
    t = time.perf_counter()
    n_out, line_um = write_muse_like(muse, shape)
    print(f"MUSE-size cube {shape[0]}x{shape[1]}x{shape[2]} float32 DATA+STAT written in "
          f"{time.perf_counter() - t:.1f} s ({muse.stat().st_size / 2**30:.2f} GiB, "
          f"{n_out} injected outliers in the field)")
    res = clean_in_child(muse, work / "muse_like_clean.fits", obs_wave=line_um,
                         method=method)
    muse_rate = n_vox / res["seconds"]
    print(f"MUSE-size clean ({res['kind']}): {res['seconds']:.1f} s, "
          f"{muse_rate / 1e6:.2f} Mvoxel/s, peak RSS {res['maxrss_mb']:.0f} MB "
          f"({'under' if res['maxrss_mb'] < 1024 else 'OVER'} 1 GB), "
          f"{res['n_flagged']} voxels replaced")
    (work / "muse_like_clean.fits").unlink()
    muse.unlink()
    return muse_rate


if __name__ == "__main__":
    sys.exit(main())
