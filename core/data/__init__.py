"""Datasets: image pairs in folders, input normalisation, synthetic scenes."""
