"""Where the plugin's icon lies; shared by the provider, its algorithms and the plugin object.

A module of its own so that `provider` and `algorithms` both import it and neither imports the
other at load time: `provider` -> `algorithms` -> `icon`, one way.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
# A packaged plugin carries its icon; in a checkout it lives in resources/ (`make package`).
ICON_PATH = next(
    (p for p in (_HERE / "icon.svg", _HERE.parent / "resources" / "icon.svg") if p.is_file()),
    _HERE / "icon.svg",
)
