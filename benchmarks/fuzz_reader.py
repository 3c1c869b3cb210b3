"""Fuzz the cube reader in child processes, so that a crash is seen and survived.

``tests/test_fuzz.py`` reads its damaged files in the test process: a crash inside a
compiled dependency (wcslib, cfitsio) takes the whole test run down, and hypothesis
cannot record the example. This script writes damaged copies of the same small cube
(whole header cards rewritten with the test's keys and plausible values, or random
header bytes changed) and reads them in a child process, which is killed if its
resident memory passes 4 GB. (Not an address-space limit: under one, the card
``WCSAXES = 665784332966`` made wcslib fail an allocation and report it, while
without one it crashed the process, as it did in a fresh clone's ``make test``.)
It reports, with the cards that differ from the valid file, every file that kills
the child (the run goes on from the next file), every file refused with an
exception other than a ``LayerclipError``, which the test's contract forbids, and
every file whose reading took the child's peak memory over 1 GB (the files are
23 kB). Exit code 1 if there is any.

Run by hand (not part of ``make bench``): each kind takes about four seconds per
thousand files on this machine.

    .venv/bin/python benchmarks/fuzz_reader.py [--cards 20000] [--bytes 20000] [--seed 1]
"""

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_fuzz import KEYS, PLAUSIBLE, card, write_valid_cube  # noqa: E402

CHUNK = 1000
MEMORY_KILL_KB = 4 * 2**20
# The child reads files start..end-1 of a folder, writing each index before reading it
# and each exception that is not a LayerclipError to ``progress.errors``.
CHILD = r"""
import resource, sys, warnings
from layerclip.errors import LayerclipError
from layerclip.io import read_cube
folder, start, end, progress = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for i in range(start, end):
    with open(progress, "w") as f:
        f.write(str(i))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_cube(f"{folder}/{i}.fits")
        except LayerclipError:
            pass
        except Exception as exc:
            with open(progress + ".errors", "a") as f:
                f.write(f"{i}\t{type(exc).__name__}: {exc}".replace("\n", " ") + "\n")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if peak > 1024:
        with open(progress + ".errors", "a") as f:
            f.write(f"{i}\tpeak memory {peak:.0f} MB\n")
        sys.exit(3)
with open(progress, "w") as f:
    f.write("done")
"""


def rewrite_cards(raw, headers, rng):
    """1-4 whole cards rewritten with a key of the test and a wrong value."""
    raw = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        lo, hi = rng.choice(headers)
        key = rng.choice(KEYS)
        kind = rng.randrange(3)
        if kind == 0:
            value = str(rng.randint(-2**40, 2**40))
        elif kind == 1:
            value = rng.choice(PLAUSIBLE)
        else:
            value = "".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(0, 20)))
        at = bytes(raw[lo:hi]).find(f"{key:<8}".encode())
        if at < 0 or at % 80:
            at = rng.randrange((hi - lo) // 80) * 80
        raw[lo + at:lo + at + 80] = card(key, value).encode("ascii")
    return bytes(raw)


def change_bytes(raw, headers, rng):
    """1-12 random bytes of the headers changed."""
    raw = bytearray(raw)
    for _ in range(rng.randint(1, 12)):
        lo, hi = rng.choice(headers)
        raw[rng.randrange(lo, hi)] = rng.randrange(256)
    return bytes(raw)


def _wait_watching_memory(child):
    """Wait for ``child``, killing it if its resident memory passes the limit."""
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            rss = int(status.read_text().split("VmRSS:")[1].split()[0])
        except (OSError, IndexError):
            rss = 0
        if rss > MEMORY_KILL_KB:
            child.kill()
        time.sleep(0.02)
    return child.returncode


def read_in_children(folder, count):
    """Read files 0..count-1 of ``folder``: the indices and exit codes of crashes, and
    the indices and messages of exceptions that are not ``LayerclipError``."""
    progress = folder / "progress"
    errors = folder / "progress.errors"
    errors.write_text("")
    crashes = []
    start = 0
    while start < count:
        # (a progress file left by the chunk before would read as this one's)
        progress.unlink(missing_ok=True)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(start),
                                  str(count), str(progress)], stderr=subprocess.DEVNULL)
        code = _wait_watching_memory(child)
        if not progress.exists():
            raise RuntimeError(f"the reading process failed before its first file "
                               f"(exit code {code})")
        reached = progress.read_text()
        if reached == "done":
            break
        if code != 3:
            crashes.append((int(reached), f"exit code {code}"))
        start = int(reached) + 1
    for line in errors.read_text().splitlines():
        index, message = line.split("\t", 1)
        crashes.append((int(index), message))
    return sorted(crashes)


def differing_cards(raw, valid):
    """The cards of ``raw`` that differ from ``valid``, as text."""
    return [raw[i:i + 80].decode("ascii", "replace").rstrip()
            for i in range(0, min(len(raw), len(valid)), 80) if raw[i:i + 80] != valid[i:i + 80]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=20000, help="files with cards rewritten")
    parser.add_argument("--bytes", type=int, default=20000, help="files with bytes changed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    total_crashes = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        valid, headers = write_valid_cube(folder / "valid.fits")
        for name, damage, count in (("cards rewritten", rewrite_cards, args.cards),
                                    ("header bytes changed", change_bytes, args.bytes)):
            crashes = []
            for first in range(0, count, CHUNK):
                n = min(CHUNK, count - first)
                cases = [damage(valid, headers, rng) for _ in range(n)]
                for i, raw in enumerate(cases):
                    (folder / f"{i}.fits").write_bytes(raw)
                for i, what in read_in_children(folder, n):
                    crashes.append((first + i, what, differing_cards(cases[i], valid)))
            print(f"{name}: {count} files, {len(crashes)} crashed the reading process "
                  "or raised something other than a LayerclipError")
            for index, what, cards in crashes:
                print(f"  file {index}: {what}; cards changed: {cards}")
            total_crashes += len(crashes)
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
