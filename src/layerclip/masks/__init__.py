"""Target masks and S/N layers (the paper's section 2.1), reproducible and automatic.

Array-level steps:

- :mod:`~layerclip.masks.snrmaps`: S/N maps from one line, several lines, or the
  continuum with line windows masked (:func:`line_snr_map`, :func:`continuum_snr_map`);
- :mod:`~layerclip.masks.select`: threshold, islands, components touching a
  position, spaxel lists, photutils segmentation;
- :mod:`~layerclip.masks.layering`: automatic layers sized for the clip's
  statistic (:func:`choose_edges`), hand-given edges, Voronoi-smoothed S/N;
- :mod:`~layerclip.masks.edits`: recorded edits (move, lift field-edge spaxels,
  demote artifact-inflated spaxels);
- :mod:`~layerclip.masks.build`: :class:`MaskSpec` + :func:`build_mask`, the whole
  sequence in one call.

Shells: :mod:`~layerclip.masks.regionfiles` (DS9/CRTF region files) and
:mod:`~layerclip.masks.products` (cube in, FITS + PNG out). Recipes (TOML) are in
:mod:`layerclip.recipe`; the figure in :mod:`layerclip.plotting.masks`.
"""

from .build import EDIT_OPS, MaskResult, MaskSpec, build_mask
from .edits import (
    EditRecord,
    demote_spaxels,
    field_edge,
    find_artifact_inflated,
    lift_edges,
    move_spaxels,
)
from .layering import (
    LayerChoice,
    assign_layers,
    choose_edges,
    edges_from_list,
    layer_counts,
    voronoi_snr,
)
from .products import mask_cube, product_paths, read_wmap, snr_map_for_cube, write_mask_products
from .regionfiles import read_regions, regions_mask
from .select import keep_touching, segment_target, spaxel_mask, threshold_mask
from .snrmaps import SNRMap, continuum_snr_map, line_snr_map, line_windows

__all__ = [
    "EDIT_OPS", "MaskResult", "MaskSpec", "build_mask",
    "EditRecord", "demote_spaxels", "field_edge", "find_artifact_inflated", "lift_edges",
    "move_spaxels",
    "LayerChoice", "assign_layers", "choose_edges", "edges_from_list", "layer_counts",
    "voronoi_snr",
    "mask_cube", "product_paths", "read_wmap", "snr_map_for_cube", "write_mask_products",
    "read_regions", "regions_mask",
    "keep_touching", "segment_target", "spaxel_mask", "threshold_mask",
    "SNRMap", "continuum_snr_map", "line_snr_map", "line_windows",
]
