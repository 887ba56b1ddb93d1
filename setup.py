"""The build: setup.cfg declares the package; this file adds its compiled modules.

The modules every record goes through are compiled to C extensions with mypyc (the
compiler that ships with mypy) when the build can run it: a C compiler and Python's
headers, as for any package that compiles. The .py sources ship beside them and are the
same code; where the compile cannot run, the build says why and installs them as they are.

ATNORM_COMPILE chooses:
  auto      compile, or fall back to the sources with a warning (the default);
  no        the sources only (an editable install always is: an extension built next to
            the sources would shadow every later edit);
  required  a compile that fails fails the build (the test environment's choice, so a
            fallback cannot pass unnoticed).
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Every record's path: decoding, the decision, the verdict, its output line and the counts.
COMPILED_MODULES = [
    "plugin/atnorm/core/jsonlines.py",
    "plugin/atnorm/core/normalize.py",
    "plugin/atnorm/core/pipeline.py",
    "plugin/atnorm/core/rules.py",
    "plugin/atnorm/core/stats.py",
    "plugin/atnorm/model/encodable.py",
    "plugin/atnorm/model/event.py",
    "plugin/atnorm/model/jsoncodec.py",
    "plugin/atnorm/model/packed.py",
    "plugin/atnorm/model/verdict.py",
]
CHOICES = ("auto", "no", "required")
# The commands that build extensions; the others (egg_info, dist_info, sdist) only
# describe the package.
BUILDS = {"bdist_wheel", "build", "build_ext", "install", "bdist", "bdist_egg"}


def _choice():
    choice = os.environ.get("ATNORM_COMPILE", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        sys.exit(f"error: ATNORM_COMPILE={choice!r}: use one of {', '.join(CHOICES)}")
    if "editable_wheel" in sys.argv or "develop" in sys.argv:
        return "no"
    if not BUILDS & set(sys.argv[1:]):  # pip asks for the metadata first: nothing to compile
        return "no"
    return choice


def _warn(message):
    message = message if len(message) <= 300 else message[:300] + "..."
    print(f"atnorm: {message}; installing the interpreted modules", file=sys.stderr)


def _extensions(choice):
    if choice == "no":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        if choice == "required":
            raise
        _warn(f"mypyc is not available ({exc})")
        return []
    try:
        # One group: calls between the compiled modules stay native.
        return mypycify(["--config-file", "setup.cfg", *COMPILED_MODULES], group_name="atnorm")
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error it cannot compile
        if choice == "required":
            raise
        _warn(f"mypyc could not translate the modules ({exc})")
        return []


class OptionalBuildExt(build_ext):
    """build_ext that, unless the compile is required, falls back to the sources whole:
    no module is left compiled without the group's shared library it imports."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing or failing: distutils' errors and OSError
            if CHOICE == "required":
                raise
            for output in self.get_outputs():
                if os.path.exists(output):
                    os.remove(output)
            _warn(f"the C compile failed ({exc})")


CHOICE = _choice()
setup(ext_modules=_extensions(CHOICE), cmdclass={"build_ext": OptionalBuildExt})
