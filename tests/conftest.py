import json
from pathlib import Path

import pytest

from atnorm.core.pipeline import EventFilter

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def load_event(name):
    return json.loads((FIXTURES / "events" / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def shared_filter():
    """One filter for tests that only read verdicts (counts are not asserted on it)."""
    return EventFilter.from_schemas()


@pytest.fixture
def fresh_filter():
    """A filter with its own counters."""
    return EventFilter.from_schemas()
