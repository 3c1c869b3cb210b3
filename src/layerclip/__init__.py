"""layerclip: layered sigma-clipping outlier rejection for IFU spectroscopy cubes.

After Hutchison et al. (2024), "TEMPLATES: A Robust Outlier Rejection Method for
JWST/NIRSpec Integral Field Spectroscopy".

Mask convention, used everywhere: True means flagged or excluded.
"""

__version__ = "0.1.0"

from .clip import ClipResult, clip_cube  # noqa: E402
from .errors import LayerclipError  # noqa: E402

__all__ = ["__version__", "clip_cube", "ClipResult", "LayerclipError"]
