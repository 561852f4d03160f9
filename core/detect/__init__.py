"""The detect path: raster pair + model -> probability raster and change polygons."""
