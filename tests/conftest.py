import pytest

from atnorm.core.pipeline import EventFilter


@pytest.fixture(scope="session")
def shared_filter():
    """One filter for tests that only read verdicts (counts are not asserted on it)."""
    return EventFilter.from_schemas()


@pytest.fixture
def fresh_filter():
    """A filter with its own counters."""
    return EventFilter.from_schemas()
