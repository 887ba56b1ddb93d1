"""Read the action tables of an IBM Cloud docs page (markdown) into plain data.

A service's Activity Tracker page lists the actions it emits in tables. The pages are
hand-written and messy, so reading one is three small steps:

1. a line-oriented scanner finds headings, pipe tables, HTML tables and their captions
   (skipping front matter, code fences and HTML comments);
2. a classifier decides what each table is: actions, regions (Yes/No), severity per
   action, renamed (legacy) actions, or none of these (recorded in `skipped_tables`);
3. `names_in_cell` turns one table cell into action names (backticks, `<br>`, commas,
   brace expansion, `{{site.data.keyword.*}}` placeholders, `<service-name>` templates).

Anything that cannot be read is reported as a `Problem` with page, line and why; nothing
is dropped silently and nothing is guessed. De-duplication: an action keeps its first
row; later rows with the same name are listed in `duplicates` and become a problem only
when they disagree about the event kind (management vs data).
"""

from __future__ import annotations

import html
import itertools
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

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


# --------------------------------------------------------------------------------------
# Placeholders: {{site.data.keyword.X}}
# --------------------------------------------------------------------------------------

_KEYWORD = re.compile(r"\{\{\s*site\.data\.keyword\.([A-Za-z0-9_.-]+?)\s*\}\}")

# Display text for the keywords these pages use most; others render as the bare keyword.
_KEYWORD_TEXT = {
    "cloud": "IBM Cloud",
    "cloud_notm": "IBM Cloud",
    "Bluemix": "IBM Cloud",
    "Bluemix_notm": "IBM Cloud",
    "IBM_notm": "IBM",
    "logs_full": "IBM Cloud Logs",
    "logs_full_notm": "IBM Cloud Logs",
    "atracker_full": "IBM Cloud Activity Tracker Event Routing",
    "atracker_full_notm": "IBM Cloud Activity Tracker Event Routing",
    "atracker_short": "Activity Tracker Event Routing",
    "at_full": "IBM Cloud Activity Tracker",
    "at_full_notm": "IBM Cloud Activity Tracker",
    "at_short": "Activity Tracker",
    "cloudaccesstrailfull": "IBM Cloud Activity Tracker",
    "cloudaccesstrailshort": "Activity Tracker",
    "vmwaresolutions_full": "IBM Cloud for VMware Solutions",
    "vmwaresolutions_short": "VMware Solutions",
    "vcf-classic": "VMware Cloud Foundation for Classic",
    "vcf-classic-short": "VCF for Classic",
    "dns_short": "DNS Services",
    "cis_short_notm": "CIS",
    "cis_full_notm": "IBM Cloud Internet Services",
    "keymanagementserviceshort": "Key Protect",
    "keymanagementservicefull": "IBM Key Protect for IBM Cloud",
    "cos_short": "Object Storage",
    "cos_full": "IBM Cloud Object Storage",
    "cos_full_notm": "IBM Cloud Object Storage",
    "messagehub": "Event Streams",
    "appid_short_notm": "App ID",
    "codeengineshort": "Code Engine",
    "codeenginefull": "IBM Cloud Code Engine",
    "codeenginefull_notm": "IBM Cloud Code Engine",
    "tg_full_notm": "IBM Cloud Transit Gateway",
    "satelliteshort": "Satellite",
    "satellitelong_notm": "IBM Cloud Satellite",
    "openshiftlong": "Red Hat OpenShift on IBM Cloud",
    "openshiftlong_notm": "Red Hat OpenShift on IBM Cloud",
    "secrets-manager_short": "Secrets Manager",
    "secrets-manager_full": "IBM Cloud Secrets Manager",
    "speechtotextshort": "Speech to Text",
    "speechtotextfull": "IBM Watson Speech to Text",
    "logs_routing_full_notm": "IBM Cloud Logs Routing",
    "powerSys_notm": "Power Virtual Server",
    "powerSysFull": "IBM Power Virtual Server",
    "databases-for": "IBM Cloud Databases",
}

# Keyword -> action service prefix, as the docs pages pair them (the keyword names the
# service in the page title, the tables use the prefix). Page evidence comes first.
_KEYWORD_SERVICE = {
    "dns_short": "dns-svcs",
    "cis_short_notm": "internet-svcs",
    "cis_full_notm": "internet-svcs",
    "keymanagementserviceshort": "kms",
    "keymanagementservicefull": "kms",
    "cos_short": "cloud-object-storage",
    "cos_full": "cloud-object-storage",
    "cos_full_notm": "cloud-object-storage",
    "logs_full": "logs",
    "logs_full_notm": "logs",
    "vmwaresolutions_short": "vmware-solutions",
    "vmwaresolutions_full": "vmware-solutions",
    "messagehub": "event-streams",
    "appid_short_notm": "appid",
    "codeengineshort": "codeengine",
    "tg_full_notm": "transit",
    "satelliteshort": "satellite",
    "satellitelong_notm": "satellite",
    "openshiftlong_notm": "containers-kubernetes",
    "secrets-manager_short": "secrets-manager",
    "speechtotextshort": "speech-to-text",
    "logs_routing_full_notm": "logs-router",
    "powerSys_notm": "power-iaas",
}


class _Keywords:
    """Resolves keyword placeholders, as display text or as the service of an action."""

    def __init__(self, subcollection: str = "", page_services: Optional[Counter] = None):
        self.subcollection = subcollection
        self.page_services = page_services or Counter()

    @staticmethod
    def text(s: str) -> str:
        return _KEYWORD.sub(lambda m: _KEYWORD_TEXT.get(m.group(1), m.group(1)), s)

    def service(self, keyword: str) -> Optional[str]:
        """The service prefix `keyword` stands for, from the page itself where possible.

        Order: the built-in pairing if the page uses that prefix; the front matter
        `subcollection` if the page uses that prefix; the only prefix the page uses;
        the built-in pairing alone. Otherwise None (the caller reports it).
        """
        known = _KEYWORD_SERVICE.get(keyword)
        used = self.page_services
        if known and known in used:
            return known
        if self.subcollection and self.subcollection in used:
            return self.subcollection
        if len(used) == 1:
            return next(iter(used))
        return known


# --------------------------------------------------------------------------------------
# Cells -> action names
# --------------------------------------------------------------------------------------

# Kramdown inline attribute lists: `{: tag-red}`, `{: #id}`, `{: caption="..."}`.
_IAL = re.compile(r"\{:[^{}]*\}")
# A label with an attribute list, `[Yes]{: tag-green}`; group 1 is the label.
_TAGGED_LABEL = re.compile(r"\[([^\[\]]*)\]\{:[^{}]*\}")
# Line breaks written inside a cell: `<br>`, `<br/>`, and a literal backslash-n.
_CELL_BREAK = re.compile(r"<br\s*/?>|\\n", re.IGNORECASE)
# Inline HTML that only styles text.
_INLINE_TAG = re.compile(r"</?(?:code|b|strong|em|i|span|p|tt|kbd|sup|sub)\b[^<>]*>", re.IGNORECASE)
# One token of an action cell: a run of anything but separators (space , ;), where a
# whole `{...}` brace group stays in one piece even if it holds commas or spaces. A
# brace that is not part of a whole group is an ordinary character of its token.
_TOKEN = re.compile(r"(?:\{[^{}]*\}|[^\s,;])+")
# A valid action: 3 to 5 dot-separated segments of [A-Za-z0-9_-], starting with a letter.
_ACTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+){2,4}\Z")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+\Z")
_BRACE_GROUP = re.compile(r"\{([^{}]*)\}")

# Words that join names in a cell ("a.b.c and a.b.d").
_CONNECTORS = {"and", "or", "&", "/", "+", "-", "\u2013", "\u2014"}
# A service segment written as a stand-in for "any service".
_PLACEHOLDER_SEGMENTS = {
    "service_name",
    "service-name",
    "servicename",
    "service_id",
    "service-id",
    "serviceid",
}
# First segments of event field paths (`requestData.x`), which some tables put under
# an "Action" header.
_FIELD_ROOTS = {
    "requestData",
    "responseData",
    "initiator",
    "target",
    "reason",
    "observer",
    "eventTime",
    "correlationId",
    "logSourceCRN",
    "dataEvent",
    "saveServiceCopy",
}


@dataclass
class CellNames:
    """What one table cell holds, read as action names."""

    names: List[str] = field(default_factory=list)  # valid names, braces expanded
    templates: List[str] = field(default_factory=list)  # names with a placeholder service
    fields: List[str] = field(default_factory=list)  # event field paths (requestData.x)
    invalid: List[Tuple[str, str]] = field(default_factory=list)  # (token, why)
    prose: str = ""  # the stretch of the cell that holds words, not names
    unresolved: List[str] = field(default_factory=list)  # keywords with no known service
    stray: List[str] = field(default_factory=list)  # names read without a trailing colon

    @property
    def found(self) -> bool:
        """True if the cell names at least one action or template."""
        return bool(self.names or self.templates)

    def issues(self) -> List[str]:
        """Why parts of the cell could not be read, one phrase per kind of trouble."""
        out = []
        for key in self.unresolved:
            placeholder = "{{site.data.keyword." + key + "}}"
            out.append(
                f"cannot tell which service {placeholder} stands for "
                "(no matching prefix or subcollection on the page)"
            )
        for name in self.templates:
            out.append(f"placeholder service in {name!r}: kept as a template, not an action")
        for token in self.stray:
            out.append(f"stray ':' after {token[:-1]!r}: read as {token[:-1]}")
        for token, why in self.invalid:
            out.append(f"{token!r} is not a valid action name ({why})")
        for token in self.fields:
            out.append(f"{token!r} is an event field, not an action")
        if self.prose:
            out.append("text that is not an action name: " + _shorten(self.prose))
        return out


def names_in_cell(
    cell: str, service_for_keyword: Optional[Callable[[str], Optional[str]]] = None
) -> CellNames:
    """Read the action names in one table cell.

    Handles backticks, `<br>` / literal `\\n` / comma / "and" separated lists, brace
    expansion (`a.b.{c,d}` -> a.b.c, a.b.d), `{{site.data.keyword.X}}` in the service
    position (via `service_for_keyword`), and placeholder services (`<service-name>`,
    `service_name`), which become templates. Tagged labels (`[On-prem]{: tag-red}`) are
    annotations, not names. Never raises.
    """
    out = CellNames()
    text = _TAGGED_LABEL.sub(" ", cell)
    text = _IAL.sub(" ", text)

    def keyword(match: "re.Match[str]") -> str:
        key = match.group(1)
        service = service_for_keyword(key) if service_for_keyword else None
        if service:
            return service
        out.unresolved.append(key)
        return f"<{key}>"

    text = _KEYWORD.sub(keyword, text)
    text = _CELL_BREAK.sub(" ", text)
    text = _INLINE_TAG.sub(" ", text)
    text = html.unescape(text).replace("`", " ").replace("*", " ")

    prose_spans: List[Tuple[int, int]] = []
    for match in _TOKEN.finditer(text):
        token = match.group(0).strip("\"'()\u201c\u201d\u2018\u2019")
        if not token or token.lower() in _CONNECTORS:
            continue
        if _is_word(token):
            prose_spans.append(match.span())
        elif token.split(".", 1)[0] in _FIELD_ROOTS:
            out.fields.append(token)
        elif _has_placeholder(token):
            if 3 <= token.count(".") + 1 <= 5:
                out.templates.append(token)
            else:
                out.invalid.append((token, _why_invalid(token)))
        elif "{" in token or "}" in token:
            names, problems = _expand_braces(token)
            out.names.extend(names)
            out.invalid.extend(problems)
        elif _ACTION.match(token):
            out.names.append(token)
        elif token.endswith(":") and _ACTION.match(token[:-1]):
            out.names.append(token[:-1])  # `a.b.c:` - a colon typed after the name
            out.stray.append(token)
        else:
            out.invalid.append((token, _why_invalid(token)))
    if prose_spans:
        out.prose = text[prose_spans[0][0] : prose_spans[-1][1]]
    return out


def _is_word(token: str) -> bool:
    """A plain word: no inner dot (a sentence's full stop aside), brace or placeholder."""
    return not any(ch in token.rstrip(".") for ch in ".{}<>")


def _has_placeholder(token: str) -> bool:
    if "<" in token or ">" in token:
        return True
    return any(seg.lower() in _PLACEHOLDER_SEGMENTS for seg in token.split("."))


def _why_invalid(token: str) -> str:
    segments = token.split(".")
    if not 3 <= len(segments) <= 5:
        return f"{len(segments)} segments, an action has 3 to 5"
    if any(not seg for seg in segments):
        return "empty segment"
    bad = sorted({ch for seg in segments for ch in seg if not _SEGMENT.match(ch)})
    if bad:
        return "characters outside A-Z a-z 0-9 _ -: " + " ".join(repr(ch) for ch in bad)
    return "must start with a letter"


def _expand_braces(token: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    """`a.b.{c,d}` -> ["a.b.c", "a.b.d"]; several groups multiply; no nesting."""
    if "{" in _BRACE_GROUP.sub("", token) or "}" in _BRACE_GROUP.sub("", token):
        return [], [(token, "unbalanced or nested braces")]
    pieces = _BRACE_GROUP.split(token)  # literal, group, literal, group, ..., literal
    choices = [
        [alt.strip() for alt in piece.split(",")] if i % 2 else [piece]
        for i, piece in enumerate(pieces)
    ]
    total = 1
    for options in choices:
        total *= len(options)
    if total > MAX_EXPANSION:
        return [], [(token, f"brace expansion gives {total} names, more than {MAX_EXPANSION}")]
    names, invalid = [], []
    for combo in itertools.product(*choices):
        name = "".join(combo)
        if _ACTION.match(name):
            names.append(name)
        else:
            invalid.append((name, _why_invalid(name) + f", from {token!r}"))
    return names, invalid


def _shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _clean_text(cell: str) -> str:
    """Cell text for humans: labels kept, attribute lists and line breaks gone."""
    text = _TAGGED_LABEL.sub(r"\1", cell)
    text = _IAL.sub(" ", text)
    text = _CELL_BREAK.sub(" ", text)
    return " ".join(_Keywords.text(text).split())


# --------------------------------------------------------------------------------------
# Scanner: page lines -> headings and raw tables
# --------------------------------------------------------------------------------------


@dataclass
class _Row:
    line: int
    cells: List[str]
    unterminated: bool = False  # starts with '|' but does not end with one


@dataclass
class _Table:
    line: int
    header: List[str]
    rows: List[_Row]
    headings: Tuple[str, ...]  # enclosing headings, outermost first, resolved
    caption: str = ""


_HEADING = re.compile(r"(#{1,6})[ \t]+(.*)\Z")
_FENCE = re.compile(r"(`{3,}|~{3,})")
# A separator cell of a pipe table: dashes with optional alignment colons.
_SEPARATOR_CELL = re.compile(r":?-+:?\Z")
_CAPTION = re.compile(r'caption\s*=\s*"([^"]*)"')
# A definition-list term that is only code spans (`a.b.c`, `a.b.{c,d}`), and a definition.
_DEF_TERM = re.compile(r"(?:`[^`]+`[\s,]*)+\Z")
_DEF_LINE = re.compile(r":[ \t]+(.*)\Z")
_SUBCOLLECTION = re.compile(r"subcollection\s*:\s*[\"']?([A-Za-z0-9_.-]+)")


def _content(line: str) -> str:
    """The line without indentation and blockquote markers (tables sit in lists too)."""
    text = line.strip()
    while text.startswith(">"):
        text = text[1:].lstrip()
    return text


def _split_row(text: str) -> Tuple[List[str], bool]:
    """Cells of a pipe-table row, and whether the row is unterminated."""
    cells = re.split(r"(?<!\\)\|", text)  # `\|` is an escaped pipe inside a cell
    leading = text.startswith("|")
    trailing = len(text) > 1 and text.endswith("|") and not text.endswith("\\|")
    if leading:
        cells = cells[1:]
    if trailing and cells:
        cells = cells[:-1]
    return [c.replace("\\|", "|").strip() for c in cells], leading and not trailing


def _is_separator(text: str) -> bool:
    if "|" not in text or "-" not in text:
        return False
    cells, _ = _split_row(text)
    return bool(cells) and all(_SEPARATOR_CELL.match(c) for c in cells)


def _heading_text(raw: str) -> str:
    text = re.sub(r"[ \t]+#+[ \t]*\Z", "", raw)  # optional closing hashes
    text = _IAL.sub("", text)
    return " ".join(_Keywords.text(text).split())


class _HtmlRows(HTMLParser):
    """Rows of an HTML table as (line, [cell text]); `<br>` becomes a line break."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: List[Tuple[int, List[str]]] = []
        self._cell: Optional[List[str]] = None

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "tr":
            self._close_cell()
            self.rows.append((self.getpos()[0], []))
        elif tag in ("td", "th"):
            self._close_cell()
            if not self.rows:
                self.rows.append((self.getpos()[0], []))
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th", "tr", "table"):
            self._close_cell()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def close(self) -> None:
        super().close()
        self._close_cell()  # a last cell left open by a missing </td>

    def _close_cell(self) -> None:
        if self._cell is not None and self.rows:
            self.rows[-1][1].append("".join(self._cell).strip())
        self._cell = None


class _Scanner:
    """Walks the page once, collecting the title, headings and tables in page order."""

    def __init__(self, lines: Sequence[str], page: str, problems: List[Problem]):
        self.lines = lines
        self.page = page
        self.problems = problems
        self.title = ""
        self.tables: List[_Table] = []
        self._headings: List[Tuple[int, str]] = []

    def problem(self, line: int, why: str) -> None:
        self.problems.append(Problem(self.page, line, why))

    def scan(self, start: int) -> None:
        lines, i, n = self.lines, start, len(self.lines)
        fence: Optional[Tuple[str, int, int]] = None  # (char, length, opening line)
        comment_from = 0
        while i < n:
            text = _content(lines[i])
            if comment_from:
                if "-->" in lines[i]:
                    comment_from = 0
            elif fence:
                if text.startswith(fence[0] * fence[1]) and not text.strip(fence[0]).strip():
                    fence = None
            elif opening := _FENCE.match(text):
                mark = opening.group(1)
                fence = (mark[0], len(mark), i + 1)
            elif "<!--" in text and "-->" not in text.split("<!--", 1)[1]:
                comment_from = i + 1
            elif heading := _HEADING.match(text):
                self._heading(heading)
            elif text[:6].lower() == "<table":
                i = self._html_table(i)
                continue
            elif "|" in text and i + 1 < n and _is_separator(_content(lines[i + 1])):
                i = self._pipe_table(i)
                continue
            elif text.startswith("|") and i + 1 < n and _content(lines[i + 1]).startswith("|"):
                i = self._pipe_block_without_separator(i)
                continue
            elif _DEF_TERM.match(text) and self._definition_at(i + 1) is not None:
                i = self._definition_list(i)
                continue
            i += 1
        if fence:
            self.problem(fence[2], "code fence is never closed: the rest of the page is code")
        if comment_from:
            self.problem(
                comment_from, "HTML comment is never closed: the rest of the page is hidden"
            )

    def _heading(self, match: "re.Match[str]") -> None:
        level, text = len(match.group(1)), _heading_text(match.group(2))
        while self._headings and self._headings[-1][0] >= level:
            self._headings.pop()
        self._headings.append((level, text))
        if level == 1 and not self.title:
            self.title = text

    def _context(self) -> Tuple[str, ...]:
        return tuple(text for _, text in self._headings)

    def _caption_after(self, i: int) -> Tuple[str, int]:
        """Read the `{: ...}` attribute lines after a table; return (caption, next line)."""
        caption = ""
        while i < len(self.lines) and _content(self.lines[i]).startswith("{:"):
            found = _CAPTION.search(self.lines[i])
            if found and not caption:
                caption = " ".join(_Keywords.text(found.group(1)).split())
            i += 1
        return caption, i

    def _pipe_table(self, i: int) -> int:
        header, _ = _split_row(_content(self.lines[i]))
        separator, _ = _split_row(_content(self.lines[i + 1]))
        if len(separator) != len(header):
            self.problem(
                i + 2, f"separator row has {len(separator)} cells, header has {len(header)}"
            )
        rows = []
        j = i + 2
        while j < len(self.lines):
            text = _content(self.lines[j])
            if (
                not text
                or "|" not in text
                or text.startswith("{:")
                or _HEADING.match(text)
                or _FENCE.match(text)
            ):
                break
            cells, unterminated = _split_row(text)
            rows.append(_Row(j + 1, cells, unterminated))
            j += 1
        caption, j = self._caption_after(j)
        self.tables.append(_Table(i + 1, header, rows, self._context(), caption))
        return j

    def _definition_at(self, i: int) -> Optional[int]:
        """The line index of the `:   definition` that follows a term ending at line i-1."""
        if i < len(self.lines) and not _content(self.lines[i]):
            i += 1  # kramdown allows one blank line between a term and its definition
        if i < len(self.lines) and _DEF_LINE.match(_content(self.lines[i])):
            return i
        return None

    def _definition_list(self, i: int) -> int:
        """Read a kramdown definition list whose terms are code (`is.vpc.vpc.{list,read}`).

        It becomes a two-column table, Action | Description, so the classifier and the
        cell reader treat its terms exactly like the cells of an action table.
        """
        rows = []
        first = i
        while i < len(self.lines):
            term = _content(self.lines[i])
            definition = self._definition_at(i + 1) if _DEF_TERM.match(term) else None
            if definition is None:
                break
            text = _DEF_LINE.match(_content(self.lines[definition])).group(1)
            rows.append(_Row(i + 1, [term, text]))
            i = definition + 1
            while i < len(self.lines) and _DEF_LINE.match(_content(self.lines[i])):
                i += 1  # further definitions of the same term
            while i < len(self.lines) and self.lines[i].startswith((" ", "\t")) and _content(
                self.lines[i]
            ):
                i += 1  # indented continuation of the definition
            following = i
            while following < len(self.lines) and not _content(self.lines[following]):
                following += 1
            if following < len(self.lines) and _DEF_TERM.match(_content(self.lines[following])):
                i = following
            else:
                break
        self.tables.append(_Table(first + 1, ["Action", "Description"], rows, self._context()))
        return i

    def _pipe_block_without_separator(self, i: int) -> int:
        j = i
        while j < len(self.lines) and _content(self.lines[j]).startswith("|"):
            j += 1
        self.problem(
            i + 1, f"{j - i} lines look like a table but have no |---| separator row: not read"
        )
        return j

    def _html_table(self, i: int) -> int:
        j = i
        while j < len(self.lines) and "</table>" not in self.lines[j].lower():
            j += 1
        if j == len(self.lines):
            self.problem(i + 1, "HTML table is never closed: rows read up to the end of the page")
            j -= 1
        parser = _HtmlRows()
        parser.feed("\n".join(self.lines[i : j + 1]))
        parser.close()
        rows = [_Row(i + rel, cells) for rel, cells in parser.rows if cells]
        if not rows:
            self.tables.append(_Table(i + 1, [], [], self._context()))
        else:
            self.tables.append(_Table(rows[0].line, rows[0].cells, rows[1:], self._context()))
        caption, nxt = self._caption_after(j + 1)
        if caption:
            self.tables[-1].caption = caption
        return nxt


# --------------------------------------------------------------------------------------
# Classifier and extraction: raw tables -> PageTables
# --------------------------------------------------------------------------------------

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
    return " ".join(_clean_text(cell).replace("`", "").replace("*", "").lower().split())


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
    readings: List[Tuple[_Row, Optional[CellNames]]]  # None where the row lacks the cell
    names_ratio: float
    fields_ratio: float


class _Reader:
    """Classifies the scanned tables and gathers what they say into one PageTables."""

    def __init__(self, page: str, title: str, keywords: _Keywords, problems: List[Problem]):
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

    def skip(self, table: _Table, why: str) -> None:
        self.out.skipped_tables.append((table.line, why))

    # -- classification ---------------------------------------------------------------

    def read(self, table: _Table) -> None:
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
                header = _clean_text(table.header[nominated[0].index])
                return self.skip(table, f"column {header!r} holds no action names")
            headers = ", ".join(_clean_text(h) for h in table.header)
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

    def _column(self, table: _Table, index: int, key: str) -> _Column:
        readings: List[Tuple[_Row, Optional[CellNames]]] = []
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

    def _row_shapes(self, table: _Table, needed: Optional[int] = None) -> None:
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
    def _where(table: _Table, action: _Column) -> Tuple[str, str]:
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

    def _actions(self, table: _Table, action: _Column, description: Optional[int]) -> None:
        heading, kind = self._where(table, action)
        for row, reading in action.readings:
            if reading is None:
                continue  # already reported as a missing action cell
            text = ""
            if description is not None and description < len(row.cells):
                text = _clean_text(row.cells[description])
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

    def _renames(self, table: _Table, legacy: _Column, current: _Column) -> None:
        heading, kind = self._where(table, current)
        for (row, old), (_, new) in zip(legacy.readings, current.readings):
            if new is not None:
                # The current column declares actions, whatever the legacy cell says.
                olds = old.names if old is not None else []
                for index, name in enumerate(new.names):
                    if len(olds) == len(new.names):
                        before = [olds[index]]
                    else:
                        before = olds if len(new.names) == 1 else []
                    note = "formerly " + ", ".join(before) if before else ""
                    self._imply(name, note, heading, kind, row.line)
            if old is None or new is None or _clean_text(row.cells[legacy.index]).lower() in _NONE:
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

    def _severities(self, table: _Table, severity: _Column, action: _Column) -> None:
        heading, kind = self._where(table, action)
        for (row, _), (_, names) in zip(severity.readings, action.readings):
            if names is None:
                continue
            # The names are declared actions even when the severity word is unreadable.
            for name in names.names:
                self._imply(name, "", heading, kind, row.line)
            if severity.index >= len(row.cells):
                continue
            level = _clean_text(row.cells[severity.index]).strip("`* ").lower()
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

    def _regions(self, table: _Table) -> None:
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
    text = _clean_text(cell).strip("[]`* ").lower()
    if text in _YES:
        value = True
    elif text in _NO:
        value = False
    else:
        return None, f"{_shorten(cell)} is neither Yes nor No"
    if tag and (tag.group(1) == "green") != value:
        return value, f"says {text.capitalize()} but is tagged {tag.group(1)}: the text is used"
    return value, None


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def _front_matter(lines: Sequence[str], page: str, problems: List[Problem]) -> Tuple[int, str]:
    """Return (first body line index, subcollection) after the YAML front matter, if any."""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None or lines[first].strip() != "---":
        return 0, ""
    for end in range(first + 1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            subcollection = ""
            for line in lines[first + 1 : end]:
                found = _SUBCOLLECTION.match(line)
                if found:
                    subcollection = found.group(1)
            return end + 1, subcollection
    problems.append(Problem(page, first + 1, "front matter is never closed: read as page text"))
    return 0, ""


def _hint_services(tables: Sequence[_Table]) -> Counter:
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


def read_page(text: Union[str, bytes], page: str = "<page>") -> PageTables:
    """Read every action, region, severity and rename table of one docs page.

    `text` is the page's markdown (bytes are decoded as UTF-8, bad bytes reported);
    `page` labels the problems. Never raises on any text.
    """
    problems: List[Problem] = []
    if isinstance(text, (bytes, bytearray)):
        text = _decode(bytes(text), page, problems)
    lines = [line.rstrip("\r") for line in text.split("\n")]
    start, subcollection = _front_matter(lines, page, problems)
    scanner = _Scanner(lines, page, problems)
    scanner.scan(start)
    keywords = _Keywords(subcollection, _hint_services(scanner.tables))
    reader = _Reader(page, scanner.title, keywords, problems)
    for table in scanner.tables:
        reader.read(table)
    return reader.finish()


def read_file(path: Union[str, "os.PathLike[str]"]) -> PageTables:
    """Read a docs page from a file; problems are labelled with the file name."""
    with open(path, "rb") as handle:
        data = handle.read()
    return read_page(data, os.path.basename(os.fspath(path)))


def _decode(data: bytes, page: str, problems: List[Problem]) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        problems.append(Problem(page, line, "NUL bytes: binary data, not a text page"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        problems.append(Problem(page, line, "not valid UTF-8: undecodable bytes replaced"))
        return data.decode("utf-8", errors="replace")
