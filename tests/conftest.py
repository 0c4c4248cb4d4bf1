"""Shared pytest fixtures.

Real media lives in ../shared/data (never inside the package). Tests that need it use the
`shared_data` fixture, which skips with a reason when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AVATAR_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data (skips the test when it is absent)."""
    if not (SHARED_DATA / "video").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set AVATAR_SHARED_DATA or place ../shared/data)")
    return SHARED_DATA


def shared_file(rel: str) -> Path:
    """Path of one file under ../shared/data, skipping the test when it is missing."""
    p = SHARED_DATA / rel
    if not p.is_file():
        pytest.skip(f"real data file missing: {p}")
    return p
