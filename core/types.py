"""Type aliases every layer uses (torch-free, at the bottom of the layers)."""

from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]
"""A file or folder path: a string or any path object."""

__all__ = ["PathLike"]
