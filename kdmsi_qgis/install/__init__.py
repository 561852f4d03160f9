"""Install the packages the plugin needs into a folder of its own in the QGIS profile."""
