"""Scanner: page lines → headings, pipe tables, HTML tables and their captions
(skipping front matter, code fences and HTML comments)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import List, Optional, Sequence, Tuple

from .cells import IAL
from .keywords import Keywords
from .pagedata import Problem


@dataclass
class Row:
    line: int
    cells: List[str]
    unterminated: bool = False  # starts with '|' but does not end with one


@dataclass
class Table:
    line: int
    header: List[str]
    rows: List[Row]
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
    text = IAL.sub("", text)
    return " ".join(Keywords.text(text).split())


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


class Scanner:
    """Walks the page once, collecting the title, headings and tables in page order."""

    def __init__(self, lines: Sequence[str], page: str, problems: List[Problem]):
        self.lines = lines
        self.page = page
        self.problems = problems
        self.title = ""
        self.tables: List[Table] = []
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
                caption = " ".join(Keywords.text(found.group(1)).split())
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
            rows.append(Row(j + 1, cells, unterminated))
            j += 1
        caption, j = self._caption_after(j)
        self.tables.append(Table(i + 1, header, rows, self._context(), caption))
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
            found = _DEF_LINE.match(_content(self.lines[definition]))
            if found is None:  # cannot happen: _definition_at matched this line
                break
            text = found.group(1)
            rows.append(Row(i + 1, [term, text]))
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
        self.tables.append(Table(first + 1, ["Action", "Description"], rows, self._context()))
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
        rows = [Row(i + rel, cells) for rel, cells in parser.rows if cells]
        if not rows:
            self.tables.append(Table(i + 1, [], [], self._context()))
        else:
            self.tables.append(Table(rows[0].line, rows[0].cells, rows[1:], self._context()))
        caption, nxt = self._caption_after(j + 1)
        if caption:
            self.tables[-1].caption = caption
        return nxt
