"""Robust mode on cubes with the generator's noise options, beyond quality_unseen.py.

``quality_unseen.py`` runs seeds 4-6 with correlated noise, a misstated ERR and 1%
of the voxels without data. This script adds the cases quoted in
``docs/robust-history.md`` (fifteenth session): the seed-0 cubes of ``quality.py``
with correlated noise, and seeds 0, 4 and 5 of every kind with 0%, 1% and 3% of
the voxels without data (holes), summed per hole fraction. Columns as in
``quality.py``.

Run: .venv/bin/python benchmarks/bench_noise_options.py (about a minute)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import HEADER, PHYSICAL, row, run_kind, warm_up  # noqa: E402

from layerclip.simulate import KINDS  # noqa: E402

COLUMNS = ("strong_missed", "strong_left", "false", "on_signal", "damage")


def main():
    warm_up()
    print("seed 0 with noise correlated between neighbouring spaxels (noise_correlation=0.7)")
    print(f"{'kind':<10}" + HEADER)
    for kind in KINDS:
        _, _, res = run_kind(kind, ["paper", "robust"], seed=0, noise_correlation=0.7,
                             **PHYSICAL)
        for name in ("paper", "robust"):
            print(f"{kind:<10}" + row(name, *res[name]))
    print("\nrobust, seeds 0, 4 and 5 of every kind, summed: "
          + ", ".join(c.replace("_", " ") for c in COLUMNS))
    for holes in (0.0, 0.01, 0.03):
        totals = dict.fromkeys(COLUMNS, 0)
        for seed in (0, 4, 5):
            for kind in KINDS:
                _, _, res = run_kind(kind, ["robust"], seed=seed, holes=holes, **PHYSICAL)
                for column in COLUMNS:
                    totals[column] += res["robust"][0][column]
        print(f"  {100 * holes:.0f}% of voxels without data: "
              + ", ".join(str(totals[c]) for c in COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
