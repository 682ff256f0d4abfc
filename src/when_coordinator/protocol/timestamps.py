"""RFC 3339 timestamps as the protocol writes and reads them (PROTOCOL.md section 2).

A timestamp stays the wire string everywhere (a ``Message``, a ``LogEntry``): ``datetime``
cannot hold nanoseconds, and a round trip must not lose digits. What the decoder checks is
that the string is valid. One regular expression that knows the calendar is the definition
(``is_timestamp``); ``decode`` takes cheaper paths that answer the same (tests sweep every
field of every shape): a timestamp of a second already seen (``is_timestamp_seen``), and the
timestamps of a log batch all at once (``all_timestamps``: their shapes in one C call, then
the one second they share, or msgspec's C parser for each)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone

import msgspec

from .errors import ProtocolError

__all__ = [
    "all_timestamps",
    "check_timestamp",
    "check_timestamps",
    "format_timestamp",
    "is_timestamp",
    "is_timestamp_seen",
    "match_timestamp",
    "parse_timestamp",
]

_ts_cache: tuple[int, str] = (-1, "")


def format_timestamp(time_ns: int | None = None) -> str:
    """RFC 3339 UTC with nanoseconds and ``Z``, as the reference writes; now when no time given."""
    global _ts_cache  # noqa: PLW0603 - a one-entry cache; a racing writer stores the same value
    if time_ns is None:
        time_ns = time.time_ns()
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    cached_second, prefix = _ts_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _ts_cache = (seconds, prefix)
    return f"{prefix}.{str(nanos).zfill(9)}Z"  # a third of the time of ``{nanos:09d}``


# ASCII digits only: RFC 3339 digits are 0-9, not any Unicode digit ``\d`` would accept.
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
_DATE = (
    r"(?:(?!0000)[0-9]{4}-(?:"
    r"(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"  # every month has 28 days
    r"|(?:0[13-9]|1[0-2])-(?:29|30)"  # every month but February has 30
    r"|(?:0[13578]|1[02])-31)"  # and these 31
    rf"|{_LEAP_YEAR}-02-29)"
)
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,9})?"
_OFFSET = r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_STAMP = rf"(?:{_DATE}[Tt ]{_TIME}{_OFFSET})?"  # empty: no timestamp, which is allowed
_match_stamp = re.compile(_STAMP).fullmatch
match_timestamp = _match_stamp
"""``re.fullmatch`` of RFC 3339 (or empty): a ``re.Match``, or None. For hot paths that
cannot afford a Python call around it."""


def is_timestamp(text: str) -> bool:
    """Whether ``text`` is RFC 3339 (or empty: no timestamp)."""
    return _match_stamp(text) is not None


# For parse_timestamp: the fields; the calendar is then checked by ``datetime`` itself.
# Compiled (and cached by ``re``) at the first parse, not at every process's import.
_TIMESTAMP_FIELDS = (
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):([0-5][0-9])"
    r":([0-5][0-9]|60)(?:\.([0-9]{1,9}))?(?:[Zz]|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))"
)


def _invalid(text: object) -> ProtocolError:
    return ProtocolError(f"timestamp {text!r} is not RFC 3339 (e.g. 2026-11-26T22:41:47.5Z)")


def check_timestamp(text: str) -> None:
    """Raise ``ProtocolError`` unless ``text`` is RFC 3339 (or empty: no timestamp)."""
    if not is_timestamp(text):
        raise _invalid(text)


def check_timestamps(texts: Iterable[str]) -> int:
    """The index of the first of ``texts`` that is not RFC 3339 (or empty); -1 if none."""
    for index, match in enumerate(map(_match_stamp, texts)):
        if match is None:
            return index
    return -1


# ``all_timestamps``: the shape of each timestamp (its digits made 0) is one of these, and
# msgspec's C parser, which knows the calendar and the ranges, reads each as a datetime. Within
# these shapes msgspec accepts no more than the pattern (tests/protocol/test_timestamp_fast_path.py
# sweeps every field); it refuses a leap second, which the pattern then accepts.
_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_SHAPES = frozenset(
    b"0000-00-00" + separator + b"00:00:00" + fraction + offset
    for separator in (b"T", b"t", b" ")
    for fraction in (b"", *(b"." + b"0" * digits for digits in range(1, 10)))
    for offset in (b"Z", b"z", b"+00:00", b"-00:00")
)


_Z_SHAPES = frozenset(shape for shape in _SHAPES if shape[-1:] in (b"Z", b"z"))
_SECONDS_SEEN_MAX = 4096
_seconds_seen: set[str] = set()  # cleared in place, never replaced: decode reads it too


def is_timestamp_seen(text: str) -> bool:
    """``is_timestamp``, cheaper for a UTC timestamp of a second already seen valid.

    A message's envelope: the frames of one second share their first 19 characters (date,
    hours, minutes, seconds), which the pattern checked once; the rest is then valid if its
    shape is (a fraction of 1 to 9 digits and ``Z``), a lookup in C. About 0.26 us against
    0.43 for the pattern. The set is bounded: full, it starts again.
    """
    shape = text.encode("ascii", "replace").translate(_ZERO_DIGITS)
    if shape in _Z_SHAPES and text[:19] in _seconds_seen:
        return True
    if _match_stamp(text) is None:
        return False
    if len(_seconds_seen) >= _SECONDS_SEEN_MAX:
        _seconds_seen.clear()
    _seconds_seen.add(text[:19])
    return True


class _Datetimes(msgspec.Struct, array_like=True, frozen=True):
    values: list[datetime]


def all_timestamps(texts: Sequence[str]) -> bool:
    """Whether every one of ``texts`` is RFC 3339, in a few C calls for all of them.

    True only if ``check_timestamps`` would find none wrong; False may be a false alarm (an
    empty text, a leap second), so a caller asks ``check_timestamps`` which one and whether.
    For a log batch it costs about a quarter of matching the pattern once per timestamp.
    """
    # One character is one byte (a non-ASCII one a "?"), each text followed by a newline.
    joined = "\n".join(texts) + "\n"
    shapes = joined.encode("ascii", "replace").translate(_ZERO_DIGITS)
    first = shapes[: len(texts[0]) + 1]
    # One formatter wrote them all, as a rule: every shape the same, one comparison in C.
    if shapes == first * len(texts) and first[:-1] in _Z_SHAPES:
        # And within one second, as a rule: then that second, seen valid, is the calendar
        # check of them all. In a shape of _Z_SHAPES a "-" is only at 4 and 7, so the 19
        # characters of a second can only occur at the start of a text: one count says
        # whether every text starts with the first one's second.
        second = texts[0][:19]
        if joined.count(second) == len(texts) and (
            second in _seconds_seen or is_timestamp_seen(texts[0])
        ):
            return True
    elif not _SHAPES.issuperset(shapes[:-1].split(b"\n")):
        return False
    try:
        msgspec.convert((texts,), _Datetimes)
    except msgspec.ValidationError:
        return False
    return True


def parse_timestamp(text: str) -> datetime:
    """Parse RFC 3339 with any offset and 0 to 9 fractional digits into an aware datetime.

    Digits past microseconds are truncated (``datetime`` cannot hold them); the wire string is
    what a ``Message`` keeps, so nothing is lost in a round trip.
    """
    match = re.fullmatch(_TIMESTAMP_FIELDS, text) if isinstance(text, str) else None
    if match is None:
        raise _invalid(text)
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = match.groups()
    tz = timezone.utc
    if sign is not None:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    micros = int((frac or "0")[:6].ljust(6, "0"))
    sec = int(second)
    try:
        # RFC 3339 allows a leap second (:60); datetime does not, so it is read as :59.
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), min(sec, 59), micros, tz
        )
    except ValueError as exc:
        raise ProtocolError(f"timestamp {text!r} is out of range: {exc}") from None
