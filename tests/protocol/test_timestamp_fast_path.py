"""``all_timestamps`` (decode's check of many timestamps at once) accepts no more than the pattern.

It says yes when a timestamp has one of the RFC 3339 shapes and msgspec's C parser reads it as
a datetime; msgspec alone accepts more than RFC 3339 allows (ten fractional digits, ``+0100``),
so the shape must exclude those. These sweeps try every value of every field in those shapes,
and the calendar over many years, against the pattern, which stays the definition.
"""

from __future__ import annotations

import itertools
import json

import pytest

from when_coordinator.protocol import ProtocolError, decode
from when_coordinator.protocol.timestamps import (
    all_timestamps,
    check_timestamps,
    is_timestamp,
    is_timestamp_seen,
)

TWO_DIGITS = [f"{n:02d}" for n in range(100)]
VALID = "2024-02-29T23:59:59.123456789Z"


def _agrees(text: str) -> None:
    fast = all_timestamps([text])
    exact = is_timestamp(text)
    assert not fast or exact, f"fast path accepts {text!r}, the pattern does not"
    # what the fast path refuses goes to the pattern: the result is the pattern's either way
    assert (fast or check_timestamps([text]) < 0) == exact, text
    # the envelope's check, once to learn the second and once from what it learned
    assert is_timestamp_seen(text) == exact, text
    assert is_timestamp_seen(text) == exact, text


@pytest.mark.parametrize("field", ["month", "day", "hour", "minute", "second", "oh", "om"])
def test_every_value_of_each_field(field: str) -> None:
    parts = {"month": "03", "day": "15", "hour": "12", "minute": "30", "second": "45"}
    for value in TWO_DIGITS:
        fields = {**parts}
        offset = "+05:30"
        if field in ("oh", "om"):
            offset = f"+{value}:30" if field == "oh" else f"-05:{value}"
        else:
            fields[field] = value
        text = (
            f"2026-{fields['month']}-{fields['day']}T{fields['hour']}:{fields['minute']}"
            f":{fields['second']}{offset}"
        )
        _agrees(text)


def test_the_calendar_over_many_years() -> None:
    years = [*range(410), *range(1896, 1905), *range(1996, 2105), 2400, 9999]
    texts = [
        f"{year:04d}-{month:02d}-{day:02d}T00:00:00Z"
        for year in years
        for month in range(14)
        for day in (0, 1, 28, 29, 30, 31, 32)
    ]
    for text in texts:
        _agrees(text)
    # and in one call, as decode makes it: all valid, or the first wrong one found exactly
    # (the pattern takes 0000-02-29, which datetime cannot hold: the exact path says yes)
    valid = [t for t in texts if is_timestamp(t) and not t.startswith("0000")]
    assert all_timestamps(valid)
    assert not all_timestamps([*valid[:5], "2023-02-29T00:00:00Z", *valid[5:9]])


@pytest.mark.parametrize(
    "tail",
    [
        "",
        ".",
        ".0",
        ".123456789",
        ".1234567891",
        "Z",
        "z",
        "+01:00",
        "+0100",
        "+01",
        "-00:00",
        "+01:00:00",
        "Z ",
        " Z",
        "\nZ",
    ],
)
@pytest.mark.parametrize("separator", ["T", "t", " ", "_", "TT", ""])
def test_fractions_offsets_and_separators(separator: str, tail: str) -> None:
    for fraction, offset in itertools.product(["", ".5", ".123456789", ".1234567890"], [tail]):
        _agrees(f"2026-11-26{separator}22:42:03{fraction}{offset}")
        _agrees(f"2026-11-26{separator}22:42:03{fraction}{offset}Z")


@pytest.mark.parametrize(
    "tail",
    [
        "Z",
        "z",
        ".5Z",
        ".123456789z",
        ".1234567890Z",
        ".Z",
        "Zz",
        "+24:00",
        "+01:60",
        "+0100",
        "",
        "\n",
    ],
)
def test_a_second_already_seen_still_has_its_tail_checked(tail: str) -> None:
    second = "2026-11-26T22:42:03"
    assert is_timestamp_seen(second + ".1Z")  # now seen
    assert is_timestamp_seen(second + tail) == is_timestamp(second + tail)
    assert is_timestamp_seen(second.replace("T", " ") + tail) == is_timestamp(
        second.replace("T", " ") + tail
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-11-26T22:42:60Z",  # a leap second: RFC 3339 allows it, msgspec does not
        "\uff12026-11-26T22:42:03Z",  # a fullwidth digit
        "2026-11-26T22:42:03Z\n",
        "\ud800",
        "2026-11-26T22:42:03Z\n2026-11-26T22:42:03Z",  # two timestamps in one string
        "-2026-11-26T22:42:03Z",
        "12026-11-26T22:42:03Z",
        "2026-1-26T22:42:03Z",
        VALID.replace("Z", "+24:00"),
    ],
)
def test_odd_texts(text: str) -> None:
    _agrees(text)
    if not is_timestamp(text):  # one wrong among good ones spoils the lot
        assert all_timestamps([VALID, VALID])
        assert not all_timestamps([VALID, text, VALID])


@pytest.mark.parametrize(
    "tail", [".1234567890Z", "+0100", ".Z", "Z\n", "\uff10Z", "+24:00", ".5z", "Z", "-23:59"]
)
def test_decode_checks_an_envelope_of_a_second_it_has_seen(tail: str) -> None:
    second = "2026-11-26T22:42:04"
    frame = '{{"id": "m-1", "type": "status", "timestamp": {}, "payload": {{}}}}'
    assert decode(frame.format(json.dumps(second + ".5Z"))).timestamp == second + ".5Z"
    assert is_timestamp_seen(second + ".5Z")  # seen now, whichever path decode took
    text = frame.format(json.dumps(second + tail))
    if is_timestamp(second + tail):
        assert decode(text).timestamp == second + tail
    else:
        with pytest.raises(ProtocolError, match="envelope 'timestamp'"):
            decode(text)
