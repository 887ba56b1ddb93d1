"""Runs the fuzz targets under atheris, each in its own process, for a time and a seed.

    python tests/fuzz/fuzz_all.py [SECONDS_PER_TARGET] [SEED] [TARGET ...]

Each target starts from its corpus in tests/fuzz/corpus/<target>/ and reads new inputs
into a scratch directory (`ATNORM_FUZZ_WORK`, default a temporary one), so the corpus in
the repository only changes on purpose. A crasher is written there as `crash-*`; replay
it with `python tests/fuzz/fuzz_<target>.py <file>` and keep it as a regression test.
`ATNORM_FUZZ_INSTRUMENT=atnorm` measures coverage in atnorm's code only (quicker to start).
Exit status: 0 when no target found anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, List

FUZZ_DIR = Path(__file__).resolve().parent
TARGETS = ("forward", "execfilter", "filter")


def run_target(test_one_input: Callable[[bytes], None], name: str, argv: List[str]) -> None:
    """The entry point of one target's own process: atheris with that target's corpus."""
    import atheris

    corpus = FUZZ_DIR / "corpus" / name
    args = list(argv)
    # With no corpus directory given, start from the repository's (read-only: new inputs
    # go to a scratch directory first, which libFuzzer writes to).
    if not any(not a.startswith("-") for a in args[1:]):
        work = Path(os.environ.get("ATNORM_FUZZ_WORK") or tempfile.mkdtemp(prefix=f"atnorm-fuzz-{name}-"))
        work.mkdir(parents=True, exist_ok=True)
        args += [str(work), str(corpus)]
    if os.environ.get("ATNORM_FUZZ_INSTRUMENT", "all") == "all":
        atheris.instrument_all()
    else:
        instrument_atnorm(atheris)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


def instrument_atnorm(atheris: Any) -> None:
    """Coverage of atnorm's own code only: instrumenting every imported library (jsonschema,
    msgpack's Python parts, the standard library) takes minutes on a slow machine, too long
    for the short run in the test suite; the long runs instrument everything."""
    import gc

    from atheris.instrument_bytecode import _is_instrumentable

    for obj in gc.get_objects():
        if _is_instrumentable(obj) and str(getattr(obj, "__module__", "")).startswith("atnorm"):
            atheris.instrument_func(obj)


def main(argv: List[str]) -> int:
    seconds = int(argv[1]) if len(argv) > 1 else 60
    seed = int(argv[2]) if len(argv) > 2 else 1
    targets = argv[3:] or list(TARGETS)
    failed = []
    for name in targets:
        work = Path(tempfile.mkdtemp(prefix=f"atnorm-fuzz-{name}-"))
        command = [sys.executable, str(FUZZ_DIR / f"fuzz_{name}.py"), f"-max_total_time={seconds}",
                   f"-seed={seed}", "-max_len=65536", "-rss_limit_mb=2048", "-timeout=30",
                   f"-artifact_prefix={work}/", "-print_final_stats=1", str(work), str(FUZZ_DIR / "corpus" / name)]
        print(f"== {name}: {seconds} s, seed {seed}, scratch {work}", flush=True)
        if subprocess.call(command) != 0:
            failed.append(name)
    if failed:
        print(f"crashers or invariant failures in: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
