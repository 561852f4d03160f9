"""How the plugin's result layers look, wherever they are loaded (dialog or Processing).

* change polygons: semi-transparent red fill with a solid outline, so the imagery below shows;
* change probability: a 0..1 colour ramp (transparent at 0), half transparent;
* tile grid for tagging: coloured by the `changed` tag (1 red, 0 green); untagged tiles filled
  orange by their `suggest` priority (strongest: tag first) with the next ranks labelled, or a
  grey dashed outline when the grid has no suggestions.

`StylePostProcessor` applies them to layers Processing loads when an algorithm finishes.
"""

from __future__ import annotations

from typing import Dict

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsMapLayer,
    QgsPalLayerSettings,
    QgsProcessingLayerPostProcessorInterface,
    QgsProperty,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsRuleBasedRenderer,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsSymbolLayer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

CHANGE_FILL = "230,40,40,90"
CHANGE_OUTLINE = "200,0,0,255"
PROBABILITY_OPACITY = 0.6
# (value, colour) stops of the probability ramp; 0 is transparent so "no change" shows nothing
PROBABILITY_STOPS = (
    (0.0, QColor(255, 255, 178, 0)),
    (0.25, QColor(254, 204, 92, 160)),
    (0.5, QColor(253, 141, 60, 220)),
    (0.75, QColor(240, 59, 32, 255)),
    (1.0, QColor(189, 0, 38, 255)),
)
TAG_COLOURS = {1: ("changed", "220,30,30,255"), 0: ("not changed", "40,160,60,255")}
SUGGEST_COLOUR = "255,140,0,60"  # untagged tiles: this orange, more opaque the sooner to tag
SUGGEST_ALPHA = '15 + 200 * (coalesce("suggest", 0) ^ 3)'  # cubed: the first ranks stand out
LABELLED_RANKS = 10


def style_change_polygons(layer: QgsVectorLayer) -> None:
    """Semi-transparent red fill, solid red outline."""
    symbol = QgsFillSymbol.createSimple(
        {
            "color": CHANGE_FILL,
            "outline_color": CHANGE_OUTLINE,
            "outline_width": "0.5",
            "outline_width_unit": "MM",
        }
    )
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))
    layer.triggerRepaint()


def style_probability(layer: QgsRasterLayer) -> None:
    """Pseudo-colour ramp over [0, 1] (transparent at 0), layer opacity `PROBABILITY_OPACITY`."""
    ramp_shader = QgsColorRampShader(0.0, 1.0)
    ramp_shader.setColorRampType(QgsColorRampShader.Type.Interpolated)
    ramp_shader.setColorRampItemList(
        [QgsColorRampShader.ColorRampItem(v, c, f"{v:.2f}") for v, c in PROBABILITY_STOPS]
    )
    ramp_shader.setSourceColorRamp(
        QgsGradientColorRamp(PROBABILITY_STOPS[0][1], PROBABILITY_STOPS[-1][1])
    )
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp_shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(1.0)
    layer.setRenderer(renderer)
    layer.setOpacity(PROBABILITY_OPACITY)
    layer.triggerRepaint()


def style_tile_grid(layer: QgsVectorLayer) -> None:
    """Tiles coloured by their `changed` tag, so tagging progress shows; with suggestions
    (`kdmsi tile-grid --suggest`), untagged tiles are filled by priority and the next
    `LABELLED_RANKS` carry their rank."""
    from kdmsi.recipe import TAG_FIELD  # torch-free, bundled

    if layer.fields().indexOf("suggest") < 0:
        categories = []
        for value, (label, colour) in TAG_COLOURS.items():
            categories.append(QgsRendererCategory(value, _tag_symbol(colour), label))
        categories.append(QgsRendererCategory(None, _untagged_symbol(), "not tagged"))
        layer.setRenderer(QgsCategorizedSymbolRenderer(TAG_FIELD, categories))
        layer.setLabelsEnabled(False)
        layer.triggerRepaint()
        return
    root = QgsRuleBasedRenderer.Rule(None)
    for value, (label, colour) in TAG_COLOURS.items():
        root.appendChild(
            QgsRuleBasedRenderer.Rule(_tag_symbol(colour), 0, 0, f'"{TAG_FIELD}" = {value}', label)
        )
    suggested = QgsFillSymbol.createSimple(
        {"color": SUGGEST_COLOUR, "outline_color": "120,120,120,255", "outline_style": "dash"}
    )
    suggested.symbolLayer(0).setDataDefinedProperty(
        QgsSymbolLayer.Property.PropertyFillColor,
        QgsProperty.fromExpression(
            f"color_rgba({SUGGEST_COLOUR.rsplit(',', 1)[0]}, {SUGGEST_ALPHA})"
        ),
    )
    root.appendChild(
        QgsRuleBasedRenderer.Rule(
            suggested, 0, 0, f'"{TAG_FIELD}" IS NULL', "not tagged (stronger: tag first)"
        )
    )
    layer.setRenderer(QgsRuleBasedRenderer(root))
    settings = QgsPalLayerSettings()
    settings.isExpression = True
    settings.fieldName = (
        f'if("{TAG_FIELD}" IS NULL AND "suggest_rank" <= {LABELLED_RANKS}, "suggest_rank", \'\')'
    )
    settings.placement = QgsPalLayerSettings.Placement.OverPoint
    text = QgsTextFormat()
    text.setSize(11)
    text.setColor(QColor(60, 20, 0))
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setColor(QColor(255, 255, 255))
    text.setBuffer(buffer)
    settings.setFormat(text)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)
    layer.triggerRepaint()


def _tag_symbol(colour: str) -> QgsFillSymbol:
    return QgsFillSymbol.createSimple(
        {"color": colour.rsplit(",", 1)[0] + ",50", "outline_color": colour}
    )


def _untagged_symbol() -> QgsFillSymbol:
    return QgsFillSymbol.createSimple(
        {"color": "0,0,0,0", "outline_color": "120,120,120,255", "outline_style": "dash"}
    )


STYLES = {
    "changes": style_change_polygons,
    "probability": style_probability,
    "grid": style_tile_grid,
}


def apply_style(layer: QgsMapLayer, kind: str) -> None:
    """Style `layer` as `kind` (a key of `STYLES`)."""
    STYLES[kind](layer)


class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles a layer Processing loads on completion (runs on the main thread)."""

    _instances: Dict[str, StylePostProcessor] = {}

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API)
        apply_style(layer, self.kind)

    @classmethod
    def for_kind(cls, kind: str) -> StylePostProcessor:
        """One long-lived instance per style: QGIS keeps only a pointer to it."""
        if kind not in cls._instances:
            cls._instances[kind] = cls(kind)
        return cls._instances[kind]
