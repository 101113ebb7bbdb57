"""Fixtures of the scaling-law tests: the reference data in ../shared/data, read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"   # repo/../shared/data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the repository; the test is skipped, with the reason, where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (a user's clone has no ../shared)")
    return SHARED_DATA
