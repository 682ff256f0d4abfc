"""The ``when-coordinator`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .phase_manager import PhaseManager, PhaseState
from .protocol import Message, PhaseChangedPayload, encode


def _demo() -> int:
    """Walk one workflow through its phases and print the message each transition sends."""
    phases = PhaseManager()

    def show(state: PhaseState) -> None:
        payload = PhaseChangedPayload(
            workflow_id=state.workflow_id,
            from_phase=state.previous_phase,
            to_phase=state.phase,
            checkpoint_id=state.checkpoint_id,
            reason=state.reason,
        )
        print(encode(Message.create(payload)))

    phases.on_phase_changed(show)
    phases.register_workflow("wf-demo")
    for phase in ("pre-flight", "planning", "execution"):
        phases.transition_to("wf-demo", phase, "demo")
    phases.pause("wf-demo", "operator pause")
    phases.complete_pause("wf-demo", "cp-1")
    phases.resume("wf-demo", "cp-1")
    phases.complete_resume("wf-demo")
    phases.complete("wf-demo")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="when-coordinator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="show a workflow's phase messages")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
