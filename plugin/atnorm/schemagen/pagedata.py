"""What the tables of one docs page say: actions, problems, and the service of an action name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

MANAGEMENT = "management"
DATA = "data"
UNSPECIFIED = "unspecified"
SEVERITIES = ("normal", "warning", "critical")

# A brace pattern may not expand to more names than this (a typo must not explode).
MAX_EXPANSION = 64


@dataclass(frozen=True)
class Action:
    """One action row of an action table."""

    name: str  # e.g. "vmware-solutions.kmip-key.create" (placeholders resolved, backticks stripped)
    description: str  # cell text, markdown attribute noise stripped
    heading: str  # the nearest heading above the table (placeholders resolved)
    event_kind: str  # MANAGEMENT | DATA | UNSPECIFIED
    line: int  # 1-based line of the row in the page


@dataclass(frozen=True)
class Problem:
    """Something on the page the reader could not read."""

    page: str
    line: int
    why: str


@dataclass
class PageTables:
    """Everything the tables of one page say."""

    page: str
    title: str
    actions: List[Action] = field(default_factory=list)
    regions: Dict[str, bool] = field(default_factory=dict)
    severities: Dict[str, str] = field(default_factory=dict)
    renames: Dict[str, str] = field(default_factory=dict)
    problems: List[Problem] = field(default_factory=list)
    skipped_tables: List[Tuple[int, str]] = field(default_factory=list)
    # Rows whose service is a placeholder (`<service_name>.x.create`): kept, never actions.
    templates: List[Action] = field(default_factory=list)
    # Later rows naming an action already listed (the first row wins).
    duplicates: List[Action] = field(default_factory=list)

    @property
    def services(self) -> List[str]:
        """The service prefixes of the actions, sorted."""
        return sorted({service_of(a.name) for a in self.actions})


def service_of(action: str, known_services: Iterable[str] = ()) -> str:
    """The service part of a dotted action name.

    The longest known service that leaves `objectType.action` (two segments or more)
    after it wins, so VPC-style two-part services (`is.vpc`) work when known; otherwise
    the first segment.
    """
    segments = action.count(".") + 1
    best = ""
    for service in known_services:
        if (
            action.startswith(service + ".")
            and segments - (service.count(".") + 1) >= 2
            and len(service) > len(best)
        ):
            best = service
    return best or action.split(".", 1)[0]
