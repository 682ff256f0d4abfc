"""``import when_coordinator`` loads what every user needs and nothing only some users need.

Every Celery worker, CLI call and short-lived job pays the import: the hub, the command line
and the instrumentor (with ``opentelemetry.instrumentation``, ``importlib.metadata`` and
``packaging`` behind it) are imported only when used. Each check runs in a fresh interpreter,
since this one has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ONLY_WHEN_USED = (
    "when_coordinator.hub",
    "when_coordinator.cli",
    "when_coordinator.demo",
    "when_coordinator.otel.instrumentor",
    "opentelemetry.instrumentation",
    "when_coordinator.otel.log_exporter",
    "opentelemetry.sdk._logs",
    "when_coordinator.otel.span_processor",
    "difflib",  # only to suggest the name of a misspelt WHEN_* variable
    "opentelemetry.baggage",  # its regular expressions: at the first workflow
)


def _modules_after(code: str) -> set[str]:
    program = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def _loaded(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


@pytest.mark.parametrize("prefix", ONLY_WHEN_USED)
def test_import_does_not_load_what_only_some_users_need(prefix: str) -> None:
    modules = _modules_after("import when_coordinator")
    assert "when_coordinator.client.coordinator" in modules  # the check sees real imports
    assert _loaded(modules, prefix) == []


def test_the_lazy_names_still_import_by_their_public_names() -> None:
    modules = _modules_after(
        "from when_coordinator.otel import (\n"
        "    CarriedCall, CoordinationLogExporter, CoordinationSpanProcessor, WhenInstrumentor,\n"
        "    attached, carrier\n"
        ")\n"
        "from opentelemetry.sdk.trace import SpanProcessor\n"
        "assert issubclass(CoordinationSpanProcessor, SpanProcessor)\n"
        "from opentelemetry.instrumentation.instrumentor import BaseInstrumentor\n"
        "assert issubclass(WhenInstrumentor, BaseInstrumentor)\n"
        "assert callable(CoordinationLogExporter.export)\n"
        "assert callable(attached) and callable(carrier) and isinstance(CarriedCall, type)"
    )
    assert "when_coordinator.otel.instrumentor" in modules
    assert "when_coordinator.otel.propagation" in modules
    assert "when_coordinator.otel.span_processor" in modules


def test_decoding_builds_its_frame_classes_on_first_use() -> None:
    """The 16 frame classes and the decoder cost import time a CLI call need not pay."""
    modules = _modules_after(
        "from when_coordinator.protocol import messages\n"
        "assert not messages._FRAME_TYPES\n"
        'message = messages.decode(\'{"id": "m-1", "type": "ping"}\')\n'
        "assert message.type is messages.MessageType.PING\n"
        "assert len(messages._FRAME_TYPES) == len(messages.MessageType)"
    )
    assert "when_coordinator.protocol.messages" in modules


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    import when_coordinator.otel  # noqa: PLC0415

    with pytest.raises(AttributeError, match="NoSuchThing"):
        when_coordinator.otel.NoSuchThing  # noqa: B018
