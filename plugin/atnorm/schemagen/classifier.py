"""Table classifier: which raw table holds actions, regions, severities or renames, and
what its rows say, into one `PageTables`."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .cells import CellNames, clean_text, names_in_cell, shorten
from .keywords import Keywords
from .pagedata import DATA, MANAGEMENT, SEVERITIES, UNSPECIFIED, Action, PageTables, Problem, service_of
from .scanner import Row, Table

# Header words. Column content decides in the end; headers only nominate columns.
_ACTION_HEADER = re.compile(r"\b(actions?|events?)\b")
_LEGACY_HEADER = re.compile(
    r"\b(legacy|old|previous|former|deprecated|reference|historical|prior)\b"
)
_CURRENT_HEADER = re.compile(r"\b(current|new|replacement)\b")
_SEVERITY_HEADER = re.compile(r"\bseverity\b")
_DESCRIPTION_HEADER = re.compile(r"\bdescription\b")
# A region id in a header cell: "Dallas (`us-south`)" or "Dallas (us-south)".
_REGION_HEADER = re.compile(r"\(\s*`?([a-z]{2}-[a-z]{2,}[0-9]*)`?\s*\)")
# "Management events", "List of data events", "actions that generate management events";
# not "KMIP management events" or "account management events", which name a topic.
_KIND_PHRASE = re.compile(
    r"(?:^|\b(?:of|generate|generates|generating|send|sends|for|the|as|are)\s+)"
    r"(management|data)\s+events?\b"
)


def _header_key(cell: str) -> str:
    return " ".join(clean_text(cell).replace("`", "").replace("*", "").lower().split())


def _kind_of(text: str) -> Optional[str]:
    """MANAGEMENT / DATA if the text says so, UNSPECIFIED if it says both, else None."""
    said = {m.group(1) for m in _KIND_PHRASE.finditer(text.strip().lower())}
    if len(said) > 1:
        return UNSPECIFIED
    return {"management": MANAGEMENT, "data": DATA}.get(said.pop()) if said else None


@dataclass
class _Column:
    index: int
    key: str  # normalized header
    readings: List[Tuple[Row, Optional[CellNames]]]  # None where the row lacks the cell
    names_ratio: float
    fields_ratio: float


class Reader:
    """Classifies the scanned tables and gathers what they say into one PageTables."""

    def __init__(self, page: str, title: str, keywords: Keywords, problems: List[Problem]):
        self.out = PageTables(page=page, title=title, problems=problems)
        self.keywords = keywords
        self._first: Dict[str, Action] = {}
        self._issues: Dict[int, List[str]] = {}  # line -> reasons, one Problem per line
        # Names only a rename table's current column or a severity table declares; they
        # become actions at the end unless an action table lists them (its row is richer).
        self._implied: Dict[str, Action] = {}

    def problem(self, line: int, why: str) -> None:
        reasons = self._issues.setdefault(line, [])
        if why not in reasons:
            reasons.append(why)

    def finish(self) -> PageTables:
        """Turn the collected reasons into problems (one per line) and check services."""
        for action in self._implied.values():
            if action.name not in self._first:
                self._first[action.name] = action
                self.out.actions.append(action)
        self._near_miss_services()
        for line, reasons in self._issues.items():
            self.out.problems.append(Problem(self.out.page, line, "; ".join(reasons)))
        self.out.problems.sort(key=lambda p: p.line)
        return self.out

    def _near_miss_services(self) -> None:
        """A rare service one letter away from a common one is most likely a typo."""
        counts = Counter(service_of(a.name) for a in self.out.actions)
        for rare, n in counts.items():
            for common, m in counts.items():
                if n < m and _one_edit_apart(rare, common):
                    first = next(a for a in self.out.actions if service_of(a.name) == rare)
                    self.problem(
                        first.line,
                        f"service {rare!r} ({_count(n, 'action')}) is one letter away from "
                        f"{common!r} ({_count(m, 'action')}): a typo?",
                    )

    def skip(self, table: Table, why: str) -> None:
        self.out.skipped_tables.append((table.line, why))

    # -- classification ---------------------------------------------------------------

    def read(self, table: Table) -> None:
        width = len(table.header)
        if width == 0:
            return self.skip(table, "table has no columns")
        if not table.rows:
            return self.skip(table, "table has no rows")
        keys = [_header_key(h) for h in table.header]
        if all(_REGION_HEADER.search(k) for k in keys if k) and any(keys):
            return self._regions(table)
        columns = [self._column(table, c, keys[c]) for c in range(width)]

        def eligible(col: _Column) -> bool:
            return col.names_ratio >= 0.5 and col.fields_ratio < 0.5

        legacy = next((c for c in columns if _LEGACY_HEADER.search(c.key) and eligible(c)), None)
        nominated = [
            c
            for c in columns
            if c is not legacy and (_ACTION_HEADER.search(c.key) or _CURRENT_HEADER.search(c.key))
        ]
        candidates = [c for c in nominated if eligible(c)]
        if not candidates:
            if any(c.fields_ratio >= 0.5 for c in nominated):
                return self.skip(
                    table, "the action column holds event field names (requestData...), not actions"
                )
            if nominated:
                header = clean_text(table.header[nominated[0].index])
                return self.skip(table, f"column {header!r} holds no action names")
            headers = ", ".join(clean_text(h) for h in table.header)
            return self.skip(table, f"no action column (headers: {headers})")
        # Prefer a "current ..." column, then the fullest one, then the leftmost.
        action = max(
            candidates,
            key=lambda c: (bool(_CURRENT_HEADER.search(c.key)), c.names_ratio, -c.index),
        )
        severity = next((c for c in columns if _SEVERITY_HEADER.search(c.key)), None)
        description = next(
            (c.index for c in columns if c is not action and _DESCRIPTION_HEADER.search(c.key)),
            None,
        )
        if description is None and width == 2 and legacy is None and severity is None:
            description = 1 - action.index  # "Action | Notes": the other column describes

        self._row_shapes(table, needed=action.index)
        if legacy is not None:
            self._renames(table, legacy, action)
        elif severity is not None:
            self._severities(table, severity, action)
        if (legacy is None and severity is None) or description is not None:
            self._actions(table, action, description)

    def _column(self, table: Table, index: int, key: str) -> _Column:
        readings: List[Tuple[Row, Optional[CellNames]]] = []
        filled = found = fields = 0
        for row in table.rows:
            if index >= len(row.cells):
                readings.append((row, None))
                continue
            reading = names_in_cell(row.cells[index], self.keywords.service)
            readings.append((row, reading))
            if row.cells[index].strip():
                filled += 1
                found += reading.found
                fields += bool(reading.fields) and not reading.found
        return _Column(
            index,
            key,
            readings,
            found / filled if filled else 0.0,
            fields / filled if filled else 0.0,
        )

    def _row_shapes(self, table: Table, needed: Optional[int] = None) -> None:
        """Report rows whose shape is off; GFM reads them anyway, and so do we."""
        width = len(table.header)
        for row in table.rows:
            why = []
            count = len(row.cells)
            if count < width:
                why.append(f"row has {count} of {width} cells")
                if needed is not None and needed >= count:
                    why.append("the action cell is missing")
            elif count > width and any(c for c in row.cells[width:]):
                why.append(f"row has {count} cells, header has {width}: extra cells ignored")
            if row.unterminated:
                why.append("row does not end with '|'")
            for reason in why:
                self.problem(row.line, reason)

    # -- the four kinds of table ------------------------------------------------------

    @staticmethod
    def _where(table: Table, action: _Column) -> Tuple[str, str]:
        """The heading and the event kind that the rows of `table` share."""
        heading = table.headings[-1] if table.headings else ""
        kind = next(
            (
                k
                for k in map(_kind_of, (action.key, table.caption, *reversed(table.headings)))
                if k is not None
            ),
            UNSPECIFIED,
        )
        return heading, kind

    def _imply(self, name: str, description: str, heading: str, kind: str, line: int) -> None:
        known = self._implied.get(name)
        if known is None:
            self._implied[name] = Action(name, description, heading, kind, line)
        elif description and description not in known.description:
            joined = "; ".join(filter(None, (known.description, description)))
            self._implied[name] = Action(name, joined, known.heading, known.event_kind, known.line)

    def _actions(self, table: Table, action: _Column, description: Optional[int]) -> None:
        heading, kind = self._where(table, action)
        for row, reading in action.readings:
            if reading is None:
                continue  # already reported as a missing action cell
            text = ""
            if description is not None and description < len(row.cells):
                text = clean_text(row.cells[description])
            if not row.cells[action.index].strip():
                self.problem(row.line, "empty action cell")
                continue
            for why in reading.issues():
                self.problem(row.line, why)
            for name in reading.templates:
                self.out.templates.append(Action(name, text, heading, kind, row.line))
            for name in reading.names:
                self._add(Action(name, text, heading, kind, row.line))

    def _add(self, action: Action) -> None:
        first = self._first.get(action.name)
        if first is None:
            self._first[action.name] = action
            self.out.actions.append(action)
            return
        self.out.duplicates.append(action)
        if first.event_kind != action.event_kind:
            self.problem(
                action.line,
                f"{action.name} is listed as a {action.event_kind} event here and as a "
                f"{first.event_kind} event at line {first.line}: the first one is kept",
            )

    def _renames(self, table: Table, legacy: _Column, current: _Column) -> None:
        heading, kind = self._where(table, current)
        for (row, old), (_, new) in zip(legacy.readings, current.readings):
            if new is not None:
                # The current column declares actions, whatever the legacy cell says.
                olds = old.names if old is not None else []
                for index, name in enumerate(new.names):
                    if len(olds) == len(new.names):
                        old_names = [olds[index]]
                    else:
                        old_names = olds if len(new.names) == 1 else []
                    note = "formerly " + ", ".join(old_names) if old_names else ""
                    self._imply(name, note, heading, kind, row.line)
            if old is None or new is None or clean_text(row.cells[legacy.index]).lower() in _NONE:
                continue
            for why in old.issues() + new.issues():
                self.problem(row.line, why)
            pairs: List[Tuple[str, str]] = []
            if len(new.names) == 1:
                pairs = [(o, new.names[0]) for o in old.names]
            elif len(old.names) == len(new.names):
                pairs = list(zip(old.names, new.names))  # brace lists pair up in order
            elif old.names and new.names:
                self.problem(
                    row.line,
                    f"{len(old.names)} old names against {len(new.names)} current names: "
                    "cannot pair them",
                )
            for before, after in pairs:
                known = self.out.renames.setdefault(before, after)
                if known != after:
                    self.problem(
                        row.line, f"{before} renamed to both {known} and {after}: the first is kept"
                    )

    def _severities(self, table: Table, severity: _Column, action: _Column) -> None:
        heading, kind = self._where(table, action)
        for (row, _), (_, names) in zip(severity.readings, action.readings):
            if names is None:
                continue
            # The names are declared actions even when the severity word is unreadable.
            for name in names.names:
                self._imply(name, "", heading, kind, row.line)
            if severity.index >= len(row.cells):
                continue
            level = clean_text(row.cells[severity.index]).strip("`* ").lower()
            for why in names.issues():
                self.problem(row.line, why)
            if level not in SEVERITIES:
                self.problem(row.line, f"severity {level!r} is not one of {', '.join(SEVERITIES)}")
                continue
            for name in names.names:
                known = self.out.severities.setdefault(name, level)
                if known != level:
                    self.problem(
                        row.line, f"{name} has severity {known} and {level}: the first is kept"
                    )

    def _regions(self, table: Table) -> None:
        regions = [
            (m.group(1) if m else None)
            for m in (_REGION_HEADER.search(_header_key(h)) for h in table.header)
        ]
        self._row_shapes(table)
        for row in table.rows:
            for index, region in enumerate(regions):
                if region is None:
                    continue
                cell = row.cells[index] if index < len(row.cells) else ""
                value, why = _yes_no(cell)
                if why:
                    self.problem(row.line, f"region {region}: {why}")
                if value is None:
                    continue
                known = self.out.regions.setdefault(region, value)
                if known != value:
                    self.problem(
                        row.line, f"region {region} is marked both Yes and No: the first is kept"
                    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _one_edit_apart(a: str, b: str) -> bool:
    """True if one insertion, deletion or substitution turns `a` into `b`."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        return a[i + 1 :] == b[i + 1 :]
    return (a[i:] == b[i + 1 :]) if len(a) < len(b) else (a[i + 1 :] == b[i:])


_NONE = {"", "-", "\u2013", "\u2014", "n/a", "na", "none"}  # "no old name" in a legacy column
_YES = {"yes", "y", "true"}
_NO = {"no", "n", "false"}


def _yes_no(cell: str) -> Tuple[Optional[bool], Optional[str]]:
    """`[Yes]{: tag-green}` -> (True, None); a tag colour that contradicts the text is reported."""
    tag = re.search(r"tag-(green|red)\b", cell)
    text = clean_text(cell).strip("[]`* ").lower()
    if text in _YES:
        value = True
    elif text in _NO:
        value = False
    else:
        return None, f"{shorten(cell)} is neither Yes nor No"
    if tag and (tag.group(1) == "green") != value:
        return value, f"says {text.capitalize()} but is tagged {tag.group(1)}: the text is used"
    return value, None



def hint_services(tables: Sequence[Table]) -> Counter:
    """Service prefixes the page's action-like columns use, keywords left unresolved."""
    used: Counter = Counter()
    for table in tables:
        for index, header in enumerate(table.header):
            if not _ACTION_HEADER.search(_header_key(header)):
                continue
            for row in table.rows:
                if index < len(row.cells):
                    for name in names_in_cell(row.cells[index]).names:
                        used[service_of(name)] += 1
    return used
