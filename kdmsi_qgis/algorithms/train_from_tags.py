"""`kdmsi:train_from_tags` -> `kdmsi.training.from_tags.train_from_tags`."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterVectorLayer,
)

from ..bridge import feedback_callbacks, running_core, vector_layer_file
from .base import KdmsiAlgorithm
from .parameters import (
    CD_EPOCHS,
    DEVICES,
    KD_EPOCHS,
    backbone_choices,
    int_value,
    model_parameter,
    number_parameter,
)


class TrainFromTagsAlgorithm(KdmsiAlgorithm):
    def name(self) -> str:
        return "train_from_tags"

    def displayName(self) -> str:  # noqa: N802 (QGIS API)
        return "Train from tagged tiles"

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API)
        return (
            "Trains a change detector from tiles tagged changed (1) / not changed (0) in the "
            "field 'changed' (empty: ignored): a teacher/student pair with knowledge "
            "distillation, multiscale sigmoid inference pseudo labels, then a Siamese "
            "DeepLabV3+ detector saved as a .kdmsi model file. Needs at least two tiles of "
            "each tag (tens of each are better). The default trunk, EfficientNet-Lite0, starts "
            "from ImageNet weights that install with the plugin's dependencies; about 9 minutes "
            "for 100 tagged 256 px tiles on 2 CPU cores, much less on a GPU. Training stops "
            "with a message when the pseudo labels come out empty or all change. Untagged "
            "tiles are ignored, so train again as tags are added; 'Start from' an earlier run's "
            "model file (warm start) instead of ImageNet."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.add_pair_parameters()
        self.addParameter(
            QgsProcessingParameterVectorLayer(
                "TILES",
                "Tagged tiles (field 'changed')",
                [QgsProcessing.SourceType.TypeVectorPolygon],
            )
        )
        backbones = backbone_choices()
        for name, label, options in (
            ("KD_BACKBONE", "Teacher/student backbone", backbones.kd),
            ("DETECTOR_BACKBONE", "Detector backbone", backbones.detector),
        ):
            self.addParameter(
                QgsProcessingParameterEnum(
                    name, label, options=options, defaultValue=options.index(backbones.default)
                )
            )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "QUALITY_ROBUST",
                "The two images differ in quality (train a quality-robust detector)",
                defaultValue=False,
            )
        )
        self.addParameter(
            number_parameter("KD_EPOCHS", "Teacher/student epochs", KD_EPOCHS, 1, maxValue=100_000)
        )
        self.addParameter(
            number_parameter("CD_EPOCHS", "Detector epochs", CD_EPOCHS, 1, maxValue=100_000)
        )
        self.addParameter(number_parameter("BATCH_SIZE", "Batch size", 8, 1, maxValue=1024))
        self.addParameter(
            number_parameter(
                "TILE_SIZE", "Tile size (px; 0: the tagged tiles' own size)", 0, 0, maxValue=4096
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum("DEVICE", "Device", options=DEVICES, defaultValue=0)
        )
        self.addParameter(
            model_parameter(
                "WARM_START", "Start from an earlier run's model (warm start)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Model file", fileFilter="KD-MSI model (*.kdmsi)"
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "WRITE_REPORT",
                "Write a training report (HTML) in <model name>_report beside the model",
                defaultValue=True,
            )
        )
        self.addOutput(QgsProcessingOutputFile("REPORT", "Training report (index.html)"))
        self.addOutput(
            QgsProcessingOutputString("TAG_CHECK", "What the model marks in the tagged tiles")
        )
        self.addOutput(
            QgsProcessingOutputString("WARNINGS", "Where the model contradicts the tags")
        )

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        self.prepare_pair(parameters, context)
        tiles = self.parameterAsVectorLayer(parameters, "TILES", context)
        self.files["tiles"] = vector_layer_file(tiles, "TILES", context, feedback)
        self.files["output"] = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not self.files["output"]:
            raise QgsProcessingException("OUTPUT: choose a file for the model")
        return True

    def training_config(self, parameters, context):
        """The `kdmsi.training.from_tags.TagTrainingConfig` the parameters describe."""
        from kdmsi.training.cd import CDConfig
        from kdmsi.training.from_tags import TagTrainingConfig
        from kdmsi.training.kd import KDConfig

        backbones = backbone_choices()
        kd_backbone = backbones.kd[self.parameterAsEnum(parameters, "KD_BACKBONE", context)]
        detector_backbone = backbones.detector[
            self.parameterAsEnum(parameters, "DETECTOR_BACKBONE", context)
        ]
        batch_size = int_value(self, parameters, "BATCH_SIZE", context)
        device = self.device(parameters, context)
        return TagTrainingConfig(
            tile_size=int_value(self, parameters, "TILE_SIZE", context) or None,
            bands=self.bands,
            kd=KDConfig(
                backbone=kd_backbone,
                epochs=int_value(self, parameters, "KD_EPOCHS", context),
                batch_size=batch_size,
                device=device,
            ),
            cd=CDConfig(
                backbone=detector_backbone,
                epochs=int_value(self, parameters, "CD_EPOCHS", context),
                batch_size=batch_size,
                device=device,
            ),
            quality_robust=self.parameterAsBoolean(parameters, "QUALITY_ROBUST", context),
            warm_start=tuple(
                p for p in [self.parameterAsFile(parameters, "WARM_START", context)] if p
            ),
        )

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        progress, cancelled = feedback_callbacks(feedback)
        with running_core(feedback):
            from kdmsi.reports.runs import default_report_dir
            from kdmsi.training.from_tags import train_from_tags

            report_dir = None
            if self.parameterAsBoolean(parameters, "WRITE_REPORT", context):
                report_dir = default_report_dir(self.files["output"])
            summary = train_from_tags(
                self.files["before"],
                self.files["after"],
                self.files["tiles"],
                self.files["output"],
                self.training_config(parameters, context),
                overwrite=True,
                progress=progress,
                cancelled=cancelled,
                report_dir=report_dir,
            )
        weights = summary["weights"]
        feedback.pushInfo(
            f"trunk weights: teacher and student {weights['kd']}; detector {weights['detector']}"
        )
        check = summary["detector"]["tag_check"]
        feedback.pushInfo(f"tags after training: {check['summary']}")
        results = {
            "OUTPUT": self.files["output"],
            "REPORT": None,
            "TAG_CHECK": check["summary"],
            "WARNINGS": "\n".join(check["warnings"]),
        }
        if report_dir is not None:
            results["REPORT"] = str(Path(report_dir) / "index.html")
            feedback.pushInfo(f"training report: {results['REPORT']}")
        return results
