"""``Config``: defaults, validation, and ``Config.from_env`` for every variable in
``ENVIRONMENT``."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest

from when_coordinator import Config, ConfigError, Coordinator, PhaseManager
from when_coordinator.client import ENVIRONMENT

# One sample per variable that sets a field: the raw text and the value the field must get. A
# variable added to ENVIRONMENT without a line here fails test_samples_cover_every_variable.
SAMPLES: dict[str, tuple[str, Any]] = {
    "WHEN_URL": (
        "wss://hub.example:8443/v1/coordination",
        "wss://hub.example:8443/v1/coordination",
    ),
    "WHEN_SERVICE_NAME": ("billing", "billing"),
    "WHEN_SERVICE_ID": ("svc-42", "svc-42"),
    "WHEN_INSTANCE_ID": ("pod-7", "pod-7"),
    "WHEN_SERVICE_VERSION": ("1.2.3", "1.2.3"),
    "WHEN_CAPABILITIES": (" etl, , reports ,x ", ("etl", "reports", "x")),
    "WHEN_SCHEMA_VERSION": ("3", 3),
    "WHEN_AUTH_TOKEN": ("tok-123", "tok-123"),
    "WHEN_CA_FILE": ("/etc/ca.pem", "/etc/ca.pem"),
    "WHEN_CLIENT_CERT_FILE": ("/etc/client.pem", "/etc/client.pem"),
    "WHEN_CLIENT_KEY_FILE": ("/etc/client.key", "/etc/client.key"),
    "WHEN_RECONNECT_INITIAL_DELAY": ("0.25", 0.25),
    "WHEN_RECONNECT_MAX_DELAY": ("12.5", 12.5),
    "WHEN_RECONNECT_BACKOFF_FACTOR": ("1.5", 1.5),
    "WHEN_RECONNECT_MAX_ATTEMPTS": ("7", 7),
    "WHEN_PING_INTERVAL": ("15", 15.0),
    "WHEN_PONG_TIMEOUT": ("9.5", 9.5),
    "WHEN_OUTBOX_MAX_MESSAGES": ("500", 500),
    "WHEN_OUTBOX_MAX_BYTES": ("65536", 65536),
    "WHEN_MAX_FRAME_BYTES": ("4096", 4096),
    "WHEN_CLOSE_TIMEOUT": ("2.5", 2.5),
    "WHEN_WORKFLOW_ENTRYPOINTS": ("app.jobs:run, app.Worker.go", ("app.jobs:run", "app.Worker.go")),
    "WHEN_LOGS_ENABLED": ("off", False),
    "WHEN_CICD_ATTRIBUTES": ("yes", True),
}

NUMERIC = [var.name for var in ENVIRONMENT if var.parse.__name__ in ("_int", "_float")]


def test_defaults_follow_the_reference_client() -> None:
    config = Config()
    assert config.when_url == ""
    assert not config.enabled
    assert config.service_name == "unknown_service"
    assert config.service_id == ""
    assert config.instance_id == f"{socket.gethostname()}-{os.getpid()}"
    assert config.capabilities == ()
    assert config.protocol_version == "1.0"
    assert config.schema_version == 0
    assert config.reconnect_initial_delay == 1.0
    assert config.reconnect_max_delay == 30.0
    assert config.reconnect_backoff_factor == 2.0
    assert config.reconnect_max_attempts == 0
    assert config.ping_interval == 30.0
    assert config.auth_token == ""
    assert config.outbox_max_messages >= 100
    assert config.outbox_max_bytes > 0
    assert config.max_frame_bytes > 0
    assert config.close_timeout > 0
    assert config.logs_enabled is True
    assert Config(when_url="ws://127.0.0.1:1/x").enabled


def test_sequences_become_tuples_and_copies_revalidate() -> None:
    lists: dict[str, Any] = {"capabilities": ["a", "b"], "workflow_entrypoints": ["m:f"]}
    config = Config(**lists)
    assert config.capabilities == ("a", "b")
    assert config.workflow_entrypoints == ("m:f",)
    changed = config.with_changes(ping_interval=3.0)
    assert changed.ping_interval == 3.0
    assert changed.capabilities == ("a", "b")
    with pytest.raises(ConfigError, match="ping_interval"):
        config.with_changes(ping_interval=-3.0)


def test_the_token_is_not_in_the_repr() -> None:
    config = Config(auth_token="very-secret-token")
    assert "very-secret-token" not in repr(config)
    assert "very-secret-token" not in str(config)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"when_url": "http://hub:8080/x"}, "when_url"),
        ({"when_url": "ws://"}, "when_url"),
        ({"when_url": "hub:8080"}, "when_url"),
        ({"service_name": ""}, "service_name"),
        ({"reconnect_initial_delay": 0}, "reconnect_initial_delay"),
        ({"reconnect_initial_delay": -1.0}, "reconnect_initial_delay"),
        ({"reconnect_initial_delay": math.nan}, "reconnect_initial_delay"),
        ({"reconnect_max_delay": math.inf}, "reconnect_max_delay"),
        ({"reconnect_initial_delay": 5.0, "reconnect_max_delay": 1.0}, "reconnect_max_delay"),
        ({"reconnect_backoff_factor": 0.5}, "reconnect_backoff_factor"),
        ({"reconnect_max_attempts": -1}, "reconnect_max_attempts"),
        ({"ping_interval": 0}, "ping_interval"),
        ({"pong_timeout": -1.0}, "pong_timeout"),
        ({"open_timeout": math.nan}, "open_timeout"),
        ({"close_timeout": -0.5}, "close_timeout"),
        ({"schema_version": -2}, "schema_version"),
        ({"outbox_max_messages": 0}, "outbox_max_messages"),
        ({"outbox_max_bytes": 0}, "outbox_max_bytes"),
        ({"max_frame_bytes": 0}, "max_frame_bytes"),
        ({"client_key_file": "k.pem"}, "client_key_file"),
        ({"capabilities": "etl"}, "capabilities"),
    ],
)
def test_validation_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Config(**changes)


def test_config_error_is_a_value_error() -> None:
    """A host that guards its set-up with ``except ValueError`` catches every refusal: from
    code, from a change, from the environment, and a wrong type (not a ``TypeError``)."""
    refusals: list[tuple[Callable[[], object], str]] = [
        (lambda: Config(ping_interval=0), "ping_interval"),
        (lambda: Config().with_changes(close_timeout=-1.0), "close_timeout"),
        (lambda: Config.from_env({"WHEN_PING_INTERVAL": "soon"}), "WHEN_PING_INTERVAL"),
        (lambda: Config(auth_token=123), "auth_token"),  # type: ignore[arg-type]
    ]
    for refuse, name in refusals:
        with pytest.raises(ValueError, match=name) as caught:
            refuse()
        assert type(caught.value) is ConfigError


def test_samples_cover_every_variable() -> None:
    assert set(SAMPLES) == {var.name for var in ENVIRONMENT if var.field is not None}
    known = {f.name for f in fields(Config)}
    for var in ENVIRONMENT:
        assert var.field is None or var.field in known, var.name
        assert var.help, f"{var.name} has no help text"


def test_from_env_reads_every_variable() -> None:
    env = {name: raw for name, (raw, _) in SAMPLES.items()}
    # Both certificate settings need each other; all is consistent as a set.
    config = Config.from_env(env)
    for var in ENVIRONMENT:
        if var.field is None:
            continue
        expected = SAMPLES[var.name][1]
        value = getattr(config, var.field)
        assert value == expected, var.name
        assert type(value) is type(expected), var.name


@pytest.mark.parametrize("name", [var.name for var in ENVIRONMENT if var.field is not None])
def test_from_env_reads_each_variable_alone(name: str) -> None:
    raw, expected = SAMPLES[name]
    env = {name: raw}
    if name == "WHEN_CLIENT_KEY_FILE":
        env["WHEN_CLIENT_CERT_FILE"] = "/etc/client.pem"
    if name == "WHEN_RECONNECT_INITIAL_DELAY":
        env["WHEN_RECONNECT_MAX_DELAY"] = "30"
    field = next(var.field for var in ENVIRONMENT if var.name == name)
    assert field is not None
    assert getattr(Config.from_env(env), field) == expected


@pytest.mark.parametrize(
    "name",
    [v.name for v in ENVIRONMENT if v.field is None and v.name != "OTEL_SERVICE_NAME"],
)
def test_variables_read_elsewhere_leave_the_config_alone(name: str) -> None:
    assert Config.from_env({name: "anything"}) == Config.from_env({})


def test_from_env_ignores_unset_and_blank_variables() -> None:
    config = Config.from_env({"WHEN_URL": "", "WHEN_PING_INTERVAL": "   ", "UNRELATED": "x"})
    assert config.when_url == ""
    assert config.ping_interval == 30.0


def test_from_env_without_arguments_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENVIRONMENT:
        monkeypatch.delenv(var.name, raising=False)
    monkeypatch.setenv("WHEN_SERVICE_NAME", "from-os-environ")
    monkeypatch.setenv("WHEN_RECONNECT_MAX_ATTEMPTS", "4")
    config = Config.from_env()
    assert config.service_name == "from-os-environ"
    assert config.reconnect_max_attempts == 4


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("raw", ["abc", "1.5.2", "0x"])
def test_unparsable_numbers_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: raw})


@pytest.mark.parametrize(
    "name",
    [
        "WHEN_RECONNECT_MAX_ATTEMPTS",
        "WHEN_SCHEMA_VERSION",
        "WHEN_OUTBOX_MAX_MESSAGES",
        "WHEN_OUTBOX_MAX_BYTES",
        "WHEN_MAX_FRAME_BYTES",
    ],
)
def test_integers_refuse_fractions(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: "2.5"})


def test_a_bad_boolean_names_the_variable() -> None:
    for raw, expected in [("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False)]:
        assert Config.from_env({"WHEN_LOGS_ENABLED": raw}).logs_enabled is expected
    with pytest.raises(ConfigError, match="WHEN_LOGS_ENABLED"):
        Config.from_env({"WHEN_LOGS_ENABLED": "maybe"})


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("WHEN_URL", "http://hub:8080/v1/coordination"),
        ("WHEN_PING_INTERVAL", "-1"),
        ("WHEN_PING_INTERVAL", "0"),
        ("WHEN_PONG_TIMEOUT", "nan"),
        ("WHEN_RECONNECT_INITIAL_DELAY", "inf"),
        ("WHEN_RECONNECT_MAX_DELAY", "0.5"),
        ("WHEN_RECONNECT_BACKOFF_FACTOR", "0.5"),
        ("WHEN_RECONNECT_MAX_ATTEMPTS", "-3"),
        ("WHEN_OUTBOX_MAX_MESSAGES", "0"),
        ("WHEN_OUTBOX_MAX_BYTES", "-1"),
        ("WHEN_MAX_FRAME_BYTES", "0"),
        ("WHEN_CLOSE_TIMEOUT", "-1"),
        ("WHEN_SCHEMA_VERSION", "-1"),
        ("WHEN_CLIENT_KEY_FILE", "/etc/client.key"),
    ],
)
def test_values_that_parse_but_cannot_work_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: raw})


def test_otel_service_name_is_the_fallback() -> None:
    assert Config.from_env({"OTEL_SERVICE_NAME": " otel-svc "}).service_name == "otel-svc"
    both = {"OTEL_SERVICE_NAME": "otel-svc", "WHEN_SERVICE_NAME": "when-svc"}
    assert Config.from_env(both).service_name == "when-svc"
    assert Config.from_env({}).service_name == "unknown_service"
    assert Config.from_env({"OTEL_SERVICE_NAME": "  "}).service_name == "unknown_service"


def test_overrides_win_over_the_environment() -> None:
    env = {
        "WHEN_URL": "ws://from-env:1/x",
        "WHEN_SERVICE_NAME": "env-name",
        "OTEL_SERVICE_NAME": "otel-name",
        "WHEN_PING_INTERVAL": "-5",  # would be invalid, but the override replaces it
    }
    config = Config.from_env(
        env, when_url="ws://override:2/y", service_name="override-name", ping_interval=7.0
    )
    assert config.when_url == "ws://override:2/y"
    assert config.service_name == "override-name"
    assert config.ping_interval == 7.0


def test_invalid_overrides_are_refused() -> None:
    with pytest.raises(ConfigError, match="no_such_setting"):
        Config.from_env({}, no_such_setting=1)
    with pytest.raises(ConfigError, match="ping_interval"):
        Config.from_env({}, ping_interval=-1.0)


# ---------------------------------------------------------------------- bad arguments from code


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"auth_token": 123}, "auth_token"),  # once accepted; the client thread then died
        ({"when_url": None}, "when_url"),
        ({"when_url": b"ws://hub:1/v1/coordination"}, "when_url"),
        ({"when_url": "ws://hub:port/v1/coordination"}, "when_url"),
        ({"outbox_max_messages": math.nan}, "outbox_max_messages"),
        ({"outbox_max_messages": 100.0}, "outbox_max_messages"),
        ({"outbox_max_bytes": "1000"}, "outbox_max_bytes"),
        ({"max_frame_bytes": True}, "max_frame_bytes"),
        ({"reconnect_max_attempts": 2.5}, "reconnect_max_attempts"),
        ({"schema_version": None}, "schema_version"),
        ({"ping_interval": "30"}, "ping_interval"),
        ({"pong_timeout": None}, "pong_timeout"),
        ({"close_timeout": True}, "close_timeout"),
        ({"reconnect_backoff_factor": math.nan}, "reconnect_backoff_factor"),
        ({"service_name": None}, "service_name"),
        ({"service_name": "billing\r\nX-Evil: 1"}, "service_name"),
        ({"auth_token": "tok\n"}, "auth_token"),
        ({"service_id": 7}, "service_id"),
        ({"instance_id": None}, "instance_id"),
        ({"version": 1.2}, "version"),
        ({"protocol_version": 1}, "protocol_version"),
        ({"ca_file": 3}, "ca_file"),
        ({"capabilities": ["etl", 3]}, "capabilities"),
        ({"capabilities": None}, "capabilities"),
        ({"workflow_entrypoints": "app:run"}, "workflow_entrypoints"),
        ({"workflow_entrypoints": [""]}, "workflow_entrypoints"),
        ({"logs_enabled": "no"}, "logs_enabled"),
    ],
)
def test_bad_types_and_values_fail_at_the_call_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        Config(**changes)


@pytest.mark.parametrize("name", [f.name for f in fields(Config)])
def test_every_field_refuses_a_value_of_the_wrong_type(name: str) -> None:
    values: dict[str, Any] = {name: object()}
    with pytest.raises(ConfigError, match=name):
        Config(**values)


def test_paths_are_accepted_for_file_names(tmp_path: Any) -> None:
    config = Config(ca_file=tmp_path / "ca.pem")
    assert config.ca_file == str(tmp_path / "ca.pem")


def test_a_coordinator_refuses_what_is_not_a_config() -> None:
    with pytest.raises(TypeError, match="Config"):
        Coordinator("ws://127.0.0.1:1/v1/coordination")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PhaseManager"):
        Coordinator(Config(), phases={})  # type: ignore[arg-type]
    Coordinator(Config(), phases=PhaseManager()).close()


# ---------------------------------------------------------------------- mistakes made easy to see


def test_an_unknown_when_variable_is_warned_about_once_naming_the_close_match(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "when_coordinator")
    env = {"WHEN_PINGINTERVAL": "5", "WHEN_QQQ_ZZZ": "1", "WHEN_URL": "ws://hub:1/v1/x"}
    for _ in range(3):
        config = Config.from_env(env)
    assert config.ping_interval == 30.0  # the typo sets nothing
    messages = [r.getMessage() for r in caplog.records]
    typo = [m for m in messages if "WHEN_PINGINTERVAL" in m]
    assert len(typo) == 1
    assert "did you mean WHEN_PING_INTERVAL?" in typo[0]
    other = [m for m in messages if "WHEN_QQQ_ZZZ" in m]
    assert len(other) == 1
    assert "docs/configuration.md" in other[0]
    assert len(messages) == 2  # the known WHEN_URL is not mentioned


def test_every_documented_variable_is_known(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "when_coordinator")
    Config.from_env({var.name: "" for var in ENVIRONMENT})
    assert caplog.records == []
