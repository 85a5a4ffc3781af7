"""What every session shares: the policy, the adapters' callbacks, ids and counters."""

from __future__ import annotations

from collections.abc import Callable

from alg.core.config import Config
from alg.core.events import Action, Event, Expectation, FlowKey

# Given the expectation the core proposes (outside port = inside port), the adapter returns the
# outside port it reserved for it, or None when none could be had. The daemon creates the
# kernel expectation here, so the port in the rewritten text is known to be free.
PortChooser = Callable[[Expectation], int | None]
# Given a flow as seen at the hook, the adapter returns the connection's (original, reply)
# tuples, which carry its NAT mapping, or None when it does not know them.
Mapper = Callable[[FlowKey], tuple[FlowKey, FlowKey] | None]


def same_port(proposal: Expectation) -> int:
    """The default chooser: the outside port is the inside port."""
    return proposal.inside_port


class Context:
    __slots__ = ("choose_port", "config", "counters", "mapper", "next_id")

    def __init__(
        self, config: Config, choose_port: PortChooser | None, mapper: Mapper | None
    ) -> None:
        self.config = config
        self.choose_port: PortChooser = choose_port or same_port
        self.mapper = mapper
        self.counters: dict[str, int] = {}
        self.next_id = 1

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def event(self, out: list[Action], event: Event) -> None:
        """Append `event` to the actions and count it under its kind (and reason)."""
        self.count(event.kind)
        if event.reason:
            self.count(f"{event.kind}.{event.reason}")
        out.append(event)
