"""Cells → action names: backticks, `<br>`, commas, brace expansion, placeholders, templates."""

from __future__ import annotations

import html
import itertools
import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from .keywords import KEYWORD, Keywords
from .pagedata import MAX_EXPANSION

# Kramdown inline attribute lists: `{: tag-red}`, `{: #id}`, `{: caption="..."}`.
IAL = re.compile(r"\{:[^{}]*\}")
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
            out.append("text that is not an action name: " + shorten(self.prose))
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
    text = IAL.sub(" ", text)

    def keyword(match: "re.Match[str]") -> str:
        key = match.group(1)
        service = service_for_keyword(key) if service_for_keyword else None
        if service:
            return service
        out.unresolved.append(key)
        return f"<{key}>"

    text = KEYWORD.sub(keyword, text)
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


def shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def clean_text(cell: str) -> str:
    """Cell text for humans: labels kept, attribute lists and line breaks gone."""
    text = _TAGGED_LABEL.sub(r"\1", cell)
    text = IAL.sub(" ", text)
    text = _CELL_BREAK.sub(" ", text)
    return " ".join(Keywords.text(text).split())
