"""The algorithms the `kdmsi` provider lists, one instance of each."""

from __future__ import annotations

from .create_tile_grid import CreateTileGridAlgorithm
from .detect_changes import DetectChangesAlgorithm
from .evaluate_changes import EvaluateChangesAlgorithm
from .train_from_tags import TrainFromTagsAlgorithm


def all_algorithms() -> list:
    return [
        DetectChangesAlgorithm(),
        CreateTileGridAlgorithm(),
        TrainFromTagsAlgorithm(),
        EvaluateChangesAlgorithm(),
    ]
