"""The `kdmsi` command line: train-kd, pseudo-labels, train-cd, evaluate, synth, detect,
export-onnx, evaluate-detection, tile-grid, train, train-hicd.

User errors (bad paths, foreign checkpoints, inconsistent datasets) end with one line on stderr
and exit status 2; Ctrl+C exits with 130 and SIGTERM with 143. None leaves partial files
behind.

Modules: `main` (the top-level parser, dispatch and exit statuses), one per group of verbs
(`train_steps`: train-kd, pseudo-labels, train-cd; `evaluate`: evaluate, synth; `detect`: detect,
export-onnx, evaluate-detection, tile-grid; `train_tags`: train, train-hicd), each adding its own
subcommands, and `common` (the progress bar, option groups and checks they share). Importing
this package imports the standard library only; torch and GDAL load inside the verbs.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
