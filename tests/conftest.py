"""Shared fixtures. Tests run on CPU with small ResNet-18 networks and random init."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real, or skip when this checkout has no such folder."""
    if not (REAL_DATA / "pairs.csv").is_file():
        pytest.skip(f"real sample data not found at {REAL_DATA}")
    return REAL_DATA
