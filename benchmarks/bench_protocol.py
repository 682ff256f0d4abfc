"""Cost of the protocol core per message, beside plain ``json`` on the same data.

The mix is every frame of the reference transcript plus a typical ``progress`` and a 20-entry
``log_batch``, the two kinds a busy service sends most. ``encode``/``decode`` must cost at most
half of ``json.dumps``/``json.loads``, although ``decode`` does more than ``json.loads``: it
validates every field and builds the typed payload (msgspec, in C), so ``typed_payload()`` is
free afterwards (shown separately, for information).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from when_coordinator.protocol import (
    LogBatchPayload,
    LogEntry,
    Message,
    MessageType,
    ProgressPayload,
    decode,
    encode,
    format_timestamp,
)

from .harness import Figure, compare

TRANSCRIPT = (
    Path(__file__).resolve().parents[2] / "shared" / "wire" / "reference-client-transcript.jsonl"
)
MAX_RATIO = 0.5
UNIT = "us/msg"


def _typical_progress() -> str:
    payload = ProgressPayload(
        "wf-7f3a9c", 42.5, "act-transform", "transform", "processing batch 17 of 40", 17, 40
    )
    return encode(Message.create(payload))


def _log_batch(entries: int = 20) -> str:
    logs = tuple(
        LogEntry(
            timestamp=format_timestamp(),
            level="info" if i % 5 else "warn",
            message=f"loaded {i * 100} rows into orders",
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
            span_id="00f067aa0ba902b7",
            workflow_id="wf-7f3a9c",
            action_id="act-load",
            fields={"rows": i * 100, "table": "orders", "ratio": i / 20},
            source_file="etl/load.py",
            source_line=120 + i,
        )
        for i in range(entries)
    )
    return encode(Message.create(LogBatchPayload(logs)))


def frames() -> list[str]:
    """The benchmark mix, as raw text frames."""
    records = [json.loads(line) for line in TRANSCRIPT.read_text("utf-8").splitlines() if line]
    mix = [r["frame"] for r in records if r["dir"] in ("in", "out")]
    return [*mix, _typical_progress(), _log_batch()]


def _micro(seconds: float) -> float:
    return seconds * 1e6


def _pair(
    name: str, frames_: list[str], *, repeat: int, min_time: float, target: bool
) -> list[Figure]:
    """Encode and decode figures for one set of frames."""
    messages = [decode(f) for f in frames_]
    data = [json.loads(f) for f in frames_]

    def ours_encode() -> None:
        for message in messages:
            encode(message)

    def json_encode() -> None:
        for item in data:
            json.dumps(item)

    def ours_decode() -> None:
        for frame in frames_:
            decode(frame)

    def json_decode() -> None:
        for frame in frames_:
            json.loads(frame)

    n = len(frames_)
    enc, enc_base = compare(ours_encode, json_encode, ops=n, repeat=repeat, min_time=min_time)
    dec, dec_base = compare(ours_decode, json_decode, ops=n, repeat=repeat, min_time=min_time)
    results = []
    for what, ours, base, baseline_name in (
        ("encode", enc, enc_base, "json.dumps"),
        ("decode", dec, dec_base, "json.loads"),
    ):
        label = f"[8] {what} {name}" if target else f"    {what} {name}"
        if target:
            results.append(
                Figure.versus(
                    label,
                    _micro(ours.median),
                    _micro(base.median),
                    UNIT,
                    max_ratio=MAX_RATIO,
                    what=baseline_name,
                )
            )
        else:
            results.append(Figure.info(label, _micro(ours.median), UNIT, _micro(base.median)))
    return results


def _typed(frames_: list[str]) -> list[Figure]:
    """What a sender and a consumer pay with typed payloads (create+encode, decode+typed)."""
    known = [f for f in frames_ if json.loads(f)["type"] in {t.value for t in MessageType}]
    typed: list[tuple[Any, MessageType]] = []
    for frame in known:
        message = decode(frame)
        assert isinstance(message.type, MessageType)
        typed.append((message.typed_payload(), message.type))
    data = [json.loads(f) for f in known]

    def create_encode() -> None:
        for payload, type_ in typed:
            encode(Message.create(payload, type=type_))

    def json_encode() -> None:
        for item in data:
            json.dumps(item)

    def decode_typed() -> None:
        for frame in known:
            decode(frame).typed_payload()

    def json_decode() -> None:
        for frame in known:
            json.loads(frame)

    n = len(known)
    build, build_base = compare(create_encode, json_encode, ops=n, repeat=5, min_time=0.05)
    read, read_base = compare(decode_typed, json_decode, ops=n, repeat=5, min_time=0.05)
    return [
        Figure.info(
            "    create+encode (typed, new id)",
            _micro(build.median),
            UNIT,
            _micro(build_base.median),
        ),
        Figure.info(
            "    decode+typed_payload", _micro(read.median), UNIT, _micro(read_base.median)
        ),
    ]


def run() -> list[Figure]:
    mix = frames()
    figures = _pair("(mix)", mix, repeat=9, min_time=0.1, target=True)
    figures += _typed(mix)
    by_type: dict[str, list[str]] = defaultdict(list)
    for frame in mix:
        by_type[json.loads(frame)["type"]].append(frame)
    for type_name in sorted(by_type):
        figures += _pair(type_name, by_type[type_name], repeat=5, min_time=0.01, target=False)
    return figures
