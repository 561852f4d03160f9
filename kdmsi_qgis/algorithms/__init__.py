"""Processing algorithms: each maps its parameters onto one `kdmsi` function, nothing more.

* `detect_changes`   -> `kdmsi.detect.with_model.detect_changes` (ZERO_SHOT:
  `kdmsi.detect.zero_shot.detect_zero_shot`)
* `create_tile_grid` -> `kdmsi.geo.tile_layer.make_tile_grid` (SUGGEST:
  `kdmsi.detect.suggest.make_suggested_tile_grid`)
* `train_from_tags`  -> `kdmsi.training.from_tags.train_from_tags`
* `evaluate_changes` -> `kdmsi.detect.reference.evaluate_model`

Threading: every algorithm resolves its layer parameters to files in `prepareAlgorithm`,
which Processing calls on the main thread (a layer with unsaved edits or in memory is written
to a temporary GeoPackage there); `processAlgorithm` then works on file paths only, so it is
safe in the worker thread that Processing, and the plugin dialog's
`QgsProcessingAlgRunnerTask`, run it in. PyTorch releases the GIL inside its kernels, so QGIS
stays responsive while a model runs. The flags declare cancel support (honoured between
batches and epochs); none asks for the main thread.

kdmsi (and so torch) is imported only inside `processAlgorithm`; loading this package never
needs torch, so QGIS starts even when it is missing and the algorithms explain how to install it.

One algorithm per module (`detect_changes`, `create_tile_grid`, `train_from_tags`,
`evaluate_changes`); `base` holds their common class `KdmsiAlgorithm`, `parameters` the option
lists and parameter factories they share, `catalog` the list the provider loads.
"""

from .base import KdmsiAlgorithm
from .catalog import all_algorithms
from .create_tile_grid import CreateTileGridAlgorithm
from .detect_changes import DetectChangesAlgorithm
from .evaluate_changes import EvaluateChangesAlgorithm
from .parameters import (
    CD_EPOCHS,
    DEVICES,
    KD_EPOCHS,
    METRICS,
    MODEL_FILTER,
    RUNTIMES,
    BackboneChoices,
    backbone_choices,
)
from .train_from_tags import TrainFromTagsAlgorithm

__all__ = [
    "CD_EPOCHS",
    "DEVICES",
    "KD_EPOCHS",
    "METRICS",
    "MODEL_FILTER",
    "RUNTIMES",
    "BackboneChoices",
    "CreateTileGridAlgorithm",
    "DetectChangesAlgorithm",
    "EvaluateChangesAlgorithm",
    "KdmsiAlgorithm",
    "TrainFromTagsAlgorithm",
    "all_algorithms",
    "backbone_choices",
]
