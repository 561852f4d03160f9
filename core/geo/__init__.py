"""Raster and vector I/O: open, align and stretch a pair, tiles and stitching, change polygons,
atomic outputs, metadata strings."""
