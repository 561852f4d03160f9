"""kdmsi: weakly supervised change detection by knowledge distillation and multiscale sigmoid
inference (KD-MSI), as a QGIS-free library.

Heavy modules (torch, GDAL) are imported by the submodules that need them, so `import kdmsi`
stays cheap for the QGIS plugin.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
