"""FITS input and output: cubes, layer maps and cleaned products.

Everything that touches a file lives in this sub-package; the algorithms in
:mod:`layerclip.clip` and :mod:`layerclip.layers` work on plain arrays.
"""

from .cube import DO_NOT_USE, NON_SCIENCE, OUTLIER, Cube, read_cube
from .layermap import read_layer_map, write_layer_map
from .output import atomic_writeto, check_output_path, write_cleaned

__all__ = [
    "Cube",
    "read_cube",
    "read_layer_map",
    "write_layer_map",
    "write_cleaned",
    "atomic_writeto",
    "check_output_path",
    "DO_NOT_USE",
    "OUTLIER",
    "NON_SCIENCE",
]
