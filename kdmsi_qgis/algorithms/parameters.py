"""What the kdmsi Processing algorithms share besides their base class: the option lists behind
their enum parameters (also the dialog's combo boxes), the training defaults, and small
factories for the parameters several algorithms declare the same way.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from qgis.core import (
    QgsProcessingParameterBand,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
)

DEVICES = ["auto", "cpu", "cuda"]
RUNTIMES = ["auto", "torch", "onnx"]
# kdmsi.recipe's, spelled out so that this module loads without kdmsi (the plugin then says
# what to install); tests/plugin/test_plugin_checks.py checks they agree
KD_EPOCHS, CD_EPOCHS = 12, 6
MODEL_FILTER = "kdmsi model (*.kdmsi *.KDMSI);;ONNX export of a kdmsi model (*.onnx *.ONNX)"
METRICS = ("OA", "F1", "cIoU", "mIoU", "FP", "FN")


class BackboneChoices(NamedTuple):
    """The backbones a Processing enum or a combo box offers, in the registry's order."""

    kd: list[str]
    detector: list[str]
    default: str


def backbone_choices() -> BackboneChoices:
    """kdmsi's trunk registry (`kdmsi.choices`: torch-free, bundled with the plugin)."""
    from kdmsi.choices import BACKBONES, DEFAULT_BACKBONE, DETECTOR_BACKBONES

    return BackboneChoices(list(BACKBONES), list(DETECTOR_BACKBONES), DEFAULT_BACKBONE)


def bands_parameter(model_bands: bool) -> QgsProcessingParameterBand:
    """BANDS: the bands of both rasters, picked among the before raster's; left empty, a model
    reads its own (``model_bands``) and everything else `kdmsi.recipe.DEFAULT_BANDS`."""
    from kdmsi.recipe import DEFAULT_BANDS  # torch-free, bundled

    default = f"the model's; zero-shot: {DEFAULT_BANDS}" if model_bands else DEFAULT_BANDS
    return QgsProcessingParameterBand(
        "BANDS",
        f"Bands of both rasters (empty: {default})",
        None,
        "BEFORE",
        optional=True,
        allowMultiple=True,
    )


def int_value(alg, parameters, name, context) -> int:
    return int(alg.parameterAsInt(parameters, name, context))


def optional_int(alg, parameters, name, context) -> Optional[int]:
    """An optional integer parameter's value; None when left empty."""
    if parameters.get(name) in (None, ""):
        return None
    return int_value(alg, parameters, name, context)


def number_parameter(name: str, label: str, default, minimum, double: bool = False, **kw):
    kind = (
        QgsProcessingParameterNumber.Type.Double
        if double
        else QgsProcessingParameterNumber.Type.Integer
    )
    return QgsProcessingParameterNumber(
        name, label, type=kind, defaultValue=default, minValue=minimum, **kw
    )


def threshold_parameter() -> QgsProcessingParameterNumber:
    return number_parameter(
        "THRESHOLD",
        "Probability threshold (empty: the model's)",
        None,
        0.0,
        double=True,
        optional=True,
        maxValue=1.0,
    )


def model_parameter(
    name: str = "MODEL",
    label: str = "Model file (.kdmsi, or its .onnx export)",
    optional: bool = False,
) -> QgsProcessingParameterFile:
    return QgsProcessingParameterFile(name, label, fileFilter=MODEL_FILTER, optional=optional)


def extent_parameter() -> QgsProcessingParameterExtent:
    return QgsProcessingParameterExtent(
        "EXTENT", "Area to analyse (empty: the whole overlap)", optional=True
    )


def file_destination(parameter):
    parameter.setSupportsNonFileBasedOutput(False)  # kdmsi writes the file itself
    return parameter
