"""Run every benchmark script in this folder (``bench_*.py`` and ``quality*.py``) in turn.

Each script prints its own numbers; this runner only sequences them and reports
which failed. ``make bench`` calls it.
"""

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    scripts = sorted(HERE.glob("bench_*.py"))
    scripts += sorted(HERE.glob("quality*.py"))
    failed = []
    for script in scripts:
        print(f"=== {script.name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)])
        print(f"=== {script.name}: exit {code} after {time.perf_counter() - start:.1f} s\n",
              flush=True)
        if code:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
