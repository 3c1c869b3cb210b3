"""Working memory of ``clip_cube`` per voxel, in paper and robust mode.

The out-of-core path sizes its blocks of planes from a bytes-per-voxel figure
(``layerclip.stream._BYTES_PER_VOXEL``); this script measures what one in-memory
call really allocates: the peak of Python's traced allocations (``tracemalloc``,
which sees NumPy's arrays) during ``clip_cube`` on a seeded 2000 x 60 x 60 float32
cube, divided by the cube's voxels. The inputs themselves are not counted.

Run: ``.venv/bin/python benchmarks/bench_memory.py``
"""

import tracemalloc

import numpy as np

from layerclip.clip import clip_cube
from layerclip.simulate import make_cube
from layerclip.stream import _BYTES_PER_VOXEL


def main():
    cube = make_cube("compact", shape=(2000, 60, 60), seed=0)
    layer_map = np.zeros((60, 60), np.int16)
    layer_map[20:40, 20:40] = 1
    layer_map[25:35, 25:35] = 2
    print(f"cube {cube.sci.shape} float32, {int((layer_map > 0).sum())} target spaxels")
    for method in ("paper", "robust"):
        # a small call first: imports and robust mode's compiled kernels are loaded
        clip_cube(cube.sci[:60], cube.err[:60], layer_map, method=method)
        tracemalloc.start()
        clip_cube(cube.sci, cube.err, layer_map, method=method)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  {method:<7} peak {peak / 2**20:6.1f} MiB = {peak / cube.sci.size:5.1f} bytes "
              f"per voxel (block sizing assumes {_BYTES_PER_VOXEL[method]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
