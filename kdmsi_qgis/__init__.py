"""KD-MSI Change Detection: QGIS plugin entry point (kept light: no torch import here)."""


def classFactory(iface):  # noqa: N802 (name fixed by QGIS)
    """Called by QGIS when the plugin is loaded; returns the plugin instance."""
    from .plugin import KdmsiPlugin

    return KdmsiPlugin(iface)
