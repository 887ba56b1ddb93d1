"""`atnorm schemas build`: JSON Schemas from Activity Tracker docs pages (build time only)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from ..errors import UsageError
from ..resources import bundled_dir
from ..schemagen.documents import documents_from_pages
from ..schemagen.pagedata import PageTables
from ..schemagen.tables import read_page


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="schemas_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="generate schemas from docs pages",
                           description="Generate JSON Schemas from Activity Tracker docs pages.")
    build.add_argument("pages", nargs="+", metavar="PAGE",
                       help="markdown docs page(s) with action tables, or directories of *.md pages")
    build.add_argument("--out", required=True, metavar="DIR", help="directory to write the schemas to")
    build.add_argument("--overlays", action="append", metavar="DIR", default=None,
                       help="directory of per-service rule overlays (*.yaml); default: the bundled ones")
    build.add_argument("--check", action="store_true",
                       help="write nothing; exit 1 if DIR differs from what would be written")
    build.add_argument("--report", action="store_true", help="also print each page's problems and skipped tables")


def page_paths(given: Sequence[str]) -> List[str]:
    """The pages named on the command line; a directory stands for its *.md pages."""
    paths: List[str] = []
    for name in given:
        if os.path.isdir(name):
            found = sorted(str(p) for p in Path(name).glob("*.md") if p.is_file())
            if not found:
                raise UsageError(f"no *.md pages in directory {name}")
            paths.extend(found)
        elif os.path.exists(name):
            paths.append(name)
        else:
            raise UsageError(f"no such page: {name}")
    return list(dict.fromkeys(paths))  # a page named twice is read once


def read_pages(paths: Sequence[str]) -> List[PageTables]:
    """Read every page; a page that cannot be opened is a one-line error."""
    pages = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read page {path}: {exc.strerror or exc}") from None
        pages.append(read_page(data, os.path.basename(path)))
    return pages


def _no_actions_why(page: PageTables) -> str:
    """Why a page without actions yields nothing, for its report line."""
    if any(p.why.startswith(("not valid UTF-8", "NUL bytes")) for p in page.problems):
        return "not a markdown docs page (binary or not UTF-8)"
    if page.templates:
        return "no action table"
    if page.skipped_tables:
        return f"no action table ({_plural(len(page.skipped_tables), 'table')}, none lists actions)"
    return "no action table"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _summary(page: PageTables) -> str:
    if page.actions:
        return (f"{page.page}: {_plural(len(page.actions), 'action')} "
                f"(services {', '.join(page.services)}), {_plural(len(page.regions), 'region')}, "
                f"{_plural(len(page.problems), 'problem')}, "
                f"{_plural(len(page.skipped_tables), 'skipped table')}")
    if page.templates:
        # Pages such as the Activity Tracker Event Routing or Cloud Databases ones only
        # show `<service_name>.x.create`: a pattern, no service to check events against.
        example = page.templates[0].name
        return (f"{page.page}: 0 actions: only {_plural(len(page.templates), 'placeholder template')} "
                f"(e.g. {example}), no service schema")
    return f"{page.page}: error: {_no_actions_why(page)}"


def _report(page: PageTables) -> None:
    for problem in page.problems:
        print(f"  {problem.page}:{problem.line}: {problem.why}", file=sys.stderr)
    for line, why in page.skipped_tables:
        print(f"  {page.page}:{line}: skipped table: {why}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    paths = page_paths(args.pages)
    overlay_dirs = [Path(d) for d in args.overlays] if args.overlays else [bundled_dir() / "overlays"]
    pages = read_pages(paths)
    failed = []
    for page in pages:
        print(_summary(page), file=sys.stderr)
        if args.report:
            _report(page)
        if not page.actions and not page.templates:
            failed.append(page.page)
    if failed:
        raise UsageError(f"{_plural(len(failed), 'page')} without an action table "
                         f"({', '.join(failed)}): nothing written")
    documents = documents_from_pages(pages, overlay_dirs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")
    try:
        if args.check:
            return _check(out, documents)
        for rel, text in documents.items():
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
        raise UsageError(f"cannot write schemas to {out}: {exc.strerror or exc}{where}") from None
    services = len(documents) - 1
    actions = sum(len(p.actions) for p in pages)
    print(f"wrote {len(documents)} schemas ({_plural(services, 'service')}, "
          f"{_plural(actions, 'action')} from {_plural(len(pages), 'page')}) to {out}", file=sys.stderr)
    return 0


def _check(out: Path, documents: Dict[str, str]) -> int:
    stale = [rel for rel, text in documents.items()
             if not (out / rel).is_file() or (out / rel).read_text(encoding="utf-8") != text]
    existing = {str(p.relative_to(out)) for p in out.rglob("*.json")} if out.is_dir() else set()
    extra = sorted(existing - set(documents))
    for rel in stale:
        print(f"stale: {out / rel}", file=sys.stderr)
    for rel in extra:
        print(f"not generated from these pages: {out / rel}", file=sys.stderr)
    return 1 if stale or extra else 0
