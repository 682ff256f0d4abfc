"""The reference when-v3 hub: run, watch and steer workflows without a when-v3 deployment.

``Hub`` is a real server speaking the hub side of the coordination protocol (PROTOCOL.md),
with an operator API on the same port; the ``when-coordinator`` command line and the test
suite both use it. See docs/hub.md.
"""

from .bounds import HubLimits
from .errors import (
    CommandError,
    CommandRefused,
    HubClosed,
    HubError,
    ServiceUnavailable,
    StatusTimeout,
    WorkflowNotFound,
)
from .model import ConnectionState, Health, ServiceState, WorkflowState
from .operator import OperatorError
from .records import Anomaly, CheckpointRecord, ErrorRecord, PhaseChange, StoredLog
from .server import COORDINATION_PATHS, OPERATOR_PATH, Hub, ReceivedMessage, SentMessage
from .state import HubState
from .store import HubStore
from .threaded import ThreadedHub
from .versions import HUB_PROTOCOL_VERSION, VersionRefused, negotiate_version
from .view import HubView

__all__ = [
    "COORDINATION_PATHS",
    "HUB_PROTOCOL_VERSION",
    "OPERATOR_PATH",
    "Anomaly",
    "CheckpointRecord",
    "CommandError",
    "CommandRefused",
    "ConnectionState",
    "ErrorRecord",
    "Health",
    "Hub",
    "HubClosed",
    "HubError",
    "HubLimits",
    "HubState",
    "HubStore",
    "HubView",
    "OperatorError",
    "PhaseChange",
    "ReceivedMessage",
    "SentMessage",
    "ServiceState",
    "ServiceUnavailable",
    "StatusTimeout",
    "StoredLog",
    "ThreadedHub",
    "VersionRefused",
    "WorkflowNotFound",
    "WorkflowState",
    "negotiate_version",
]
