"""Deterministic synthetic before/after aerial scenes with change ground truth.

A scene is farmland with fields, meadows and trees, crossed by asphalt roads and dotted with
clusters of buildings (pitched or flat roofs, each casting a short shadow). Between the two
dates some buildings are constructed (mostly a new development next to a road, sometimes with
a new access road) and some are demolished (leaving bare soil). Those are the *true* changes:
the mask holds the pixels whose content changed, i.e. changed building footprints, their cast
shadows and new road surface.

The after image also carries nuisance changes that are *not* in the mask: a global
illumination change (per-band gain and offset), a seasonal tint (vegetation shifts towards
yellow/brown and loses near-infrared reflectance), per-pixel Gaussian noise on both dates, and
a sub-pixel shift (bilinear resampling, 0.2-0.45 px per axis).

Everything is vectorised numpy and driven by ``numpy.random.SeedSequence(seed)``, so the same
arguments give bit-identical scenes. GDAL is only imported by the functions that write files.

Modules, bottom to top: ``noise`` (value/fractal noise) and ``sensor`` (blur, shift,
illumination, noise, quantisation); ``ground``, ``roads``, ``buildings``; ``layout`` (where
everything is, which buildings change); ``render`` (clean image of one date and its bands);
``scene`` (``Scene``, ``make_scene``); ``write`` (GeoTIFFs and tile datasets).
"""

from .scene import Scene, make_scene
from .write import write_scene, write_synthetic_dataset, write_tile_dataset

__all__ = ["Scene", "make_scene", "write_scene", "write_synthetic_dataset", "write_tile_dataset"]
