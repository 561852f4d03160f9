"""Plain Python values as metadata strings and back (GDAL raster/vector metadata, ONNX
``metadata_props``): strings are kept as they are, everything else is JSON. Torch- and
GDAL-free, so the light modules (`kdmsi.runtime.onnx_model`) can use it."""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional


def metadata_strings(metadata: Optional[Mapping[str, Any]]) -> dict[str, str]:
    """{key: value} -> {key: string}: strings as they are, other values as sorted-key JSON."""
    return {
        str(key): value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        for key, value in (metadata or {}).items()
    }


def decode_metadata(items: Mapping[str, str]) -> dict[str, Any]:
    """The inverse of `metadata_strings`: each string that parses as JSON is decoded, any
    other is kept as the string it is."""
    out: dict[str, Any] = {}
    for key, value in items.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


__all__ = ["decode_metadata", "metadata_strings"]
