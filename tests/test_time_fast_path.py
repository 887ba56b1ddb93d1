"""The eventTime fast path (common ISO forms, by slicing and minute arithmetic) against the
reference path (regex and datetime), on generated and mutated times: the same canonical text
or the same None."""

from __future__ import annotations

import random
from typing import List

import pytest

from atnorm.core.normalize import make_reference_time_formatter, make_time_formatter

SUFFIXES = ["Z", "z", "+0000", "+00:00", "+00", "UTC", "", " Z", "utc", "-0000", "+05:30", "-0600", "+0130",
            "+00:0", "+000", "Zz", " +0000", "-00:00", "+01", "-12", "+14:00", "-23:59", "+23:59", "-99:99",
            "+9999", "+0045", "-00:30", "-0015"]
SEPARATORS = ["T", "T", "T", "t", " ", "x", "_"]


def _two(rng: random.Random, high: int) -> str:
    return f"{rng.randint(0, high):02d}"


def _time(rng: random.Random) -> str:
    year = rng.choice([f"{rng.randint(1970, 2035):04d}", "0000", "9999", f"{rng.randint(0, 9999):04d}"])
    month = rng.choice([_two(rng, 12), _two(rng, 13)])
    day = rng.choice([_two(rng, 28), _two(rng, 32)])
    if rng.random() < 0.1:  # leap days, valid or not
        month, day = "02", rng.choice(["29", "30"])
        year = rng.choice(["2024", "2023", "2000", "1900"])
    elif rng.random() < 0.1:  # where an offset moves the date across a year, or out of range
        year, month, day = rng.choice([("0001", "01", "01"), ("9999", "12", "31"), ("2024", "12", "31"),
                                       ("2025", "01", "01"), ("2024", "02", "28"), ("2024", "03", "01")])
    clock = f"{_two(rng, rng.choice([23, 25]))}:{_two(rng, rng.choice([59, 61]))}:{_two(rng, rng.choice([59, 99]))}"
    fraction = ""
    if rng.random() < 0.7:
        fraction = rng.choice([".", ","]) + "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 12)))
    return f"{year}-{month}-{day}{rng.choice(SEPARATORS)}{clock}{fraction}{rng.choice(SUFFIXES)}"


def _mutated(rng: random.Random, text: str) -> str:
    position = rng.randrange(len(text) + 1)
    choice = rng.random()
    if choice < 0.3:
        return text[:position] + rng.choice("0123456789-:.T +Z٣²\u00a0") + text[position:]
    if choice < 0.6 and text:
        return text[:position] + text[position + 1:]
    if choice < 0.8 and position < len(text):
        return text[:position] + rng.choice("٣²x9 ") + text[position + 1:]
    return rng.choice([" ", "\t", "\n"]) + text if rng.random() < 0.5 else text + " "


def _times(count: int, seed: int) -> List[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = _time(rng)
        while rng.random() < 0.3:
            text = _mutated(rng, text)
        out.append(text)
    return out


@pytest.mark.parametrize("fraction_digits", range(10))
def test_fast_path_gives_what_the_reference_gives(fraction_digits):
    fast, reference = make_time_formatter(fraction_digits), make_reference_time_formatter(fraction_digits)
    times = _times(12_000, seed=fraction_digits)
    mismatches = [(t, fast(t), reference(t)) for t in times if fast(t) != reference(t)]
    assert not mismatches, mismatches[:10]
    # The generator reaches both sides: times the fast path reads, and times it leaves alone.
    assert sum(reference(t) is not None for t in times) > 2_000
    assert sum(reference(t) is None for t in times) > 1_000


def test_fast_path_reads_the_common_forms_without_the_reference():
    fast = make_time_formatter(3)
    assert fast("2024-02-29T23:59:60.1234Z") == "2024-02-29T23:59:59.123+0000"
    assert fast("2023-02-29T00:00:00Z") is None
    assert fast("2024-01-01t00:00:00,5+00:00") == "2024-01-01T00:00:00.500+0000"
    assert fast("2024-01-01T00:00:0٣Z") == make_reference_time_formatter(3)("2024-01-01T00:00:0٣Z")


def test_fast_path_moves_the_clock_and_the_date_by_the_offset():
    fast = make_time_formatter(3)
    assert fast("2024-12-31T22:30:00.5-02:00") == "2025-01-01T00:30:00.500+0000"
    assert fast("2024-03-01T01:00:00+0530") == "2024-02-29T19:30:00.000+0000"
    assert fast("2024-01-01T12:00:00-00:00") == "2024-01-01T12:00:00.000+0000"
    assert fast("9999-12-31T23:00:00-05") is None  # after year 9999 in UTC
    assert fast("0001-01-01T00:00:00+01") is None  # before year 1
