"""Read the action tables of an IBM Cloud docs page (markdown) into plain data.

A service's Activity Tracker page lists the actions it emits in tables. The pages are
hand-written and messy, so reading one is three small steps, a module each:

1. `scanner`: a line-oriented scanner finds headings, pipe tables, HTML tables and their
   captions (skipping front matter, code fences and HTML comments);
2. `classifier`: decides what each table is: actions, regions (Yes/No), severity per
   action, renamed (legacy) actions, or none of these (recorded in `skipped_tables`);
3. `cells`: `names_in_cell` turns one table cell into action names (backticks, `<br>`,
   commas, brace expansion, `{{site.data.keyword.*}}` placeholders (`keywords`),
   `<service-name>` templates).

What they find is `pagedata.PageTables`. Anything that cannot be read is reported as a
`Problem` with page, line and why; nothing is dropped silently and nothing is guessed.
De-duplication: an action keeps its first row; later rows with the same name are listed
in `duplicates` and become a problem only when they disagree about the event kind
(management vs data).
"""

from __future__ import annotations

import os
import re
from typing import List, Sequence, Tuple, Union

from .classifier import Reader, hint_services
from .keywords import Keywords
from .pagedata import PageTables, Problem
from .scanner import Scanner

_SUBCOLLECTION = re.compile(r"subcollection\s*:\s*[\"']?([A-Za-z0-9_.-]+)")


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
    scanner = Scanner(lines, page, problems)
    scanner.scan(start)
    keywords = Keywords(subcollection, hint_services(scanner.tables))
    reader = Reader(page, scanner.title, keywords, problems)
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

