"""Shared fixtures: paths to the real data beside the checkout, and small phantom datasets."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data beside the checkout; tests that need it skip on a user's fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
