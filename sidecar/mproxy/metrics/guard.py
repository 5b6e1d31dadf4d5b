"""A cardinality guard for per-client label values.

At most `max_clients` client label values are live. Touching a new client when full evicts the least recently
seen one: every series that carried it is removed and its counts are folded into the client="other" series,
so sums over the client label stay monotonic and nothing is lost. Streams keep a `ClientSlot` taken at open;
a slot that was evicted in the meantime reports "other" so gauges go back down where they went up.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["OTHER", "ClientGuard", "ClientSlot"]

OTHER = "other"


@dataclass(eq=False, slots=True)
class ClientSlot:
    client: str
    alive: bool = True
    # Shadow values of every series carrying this client: (metric, other label values) -> value,
    # so eviction can fold them into "other" without reading the registry's internals.
    values: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.client if self.alive else OTHER


class ClientGuard:
    def __init__(self, max_clients: int, on_evict: Callable[[ClientSlot], None]) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        self.max_clients = max_clients
        self._on_evict = on_evict
        self._slots: OrderedDict[str, ClientSlot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, client: str) -> bool:
        return client in self._slots

    def touch(self, client: str) -> ClientSlot:
        """The live slot of `client` (created, evicting the least recently seen when full)."""
        if client == OTHER:  # a client literally called "other" must not alias the bucket
            client = "other_"
        slots = self._slots
        slot = slots.get(client)
        if slot is not None:
            slots.move_to_end(client)
            return slot
        while len(slots) >= self.max_clients:
            _, old = slots.popitem(last=False)
            old.alive = False
            self._on_evict(old)
        slot = ClientSlot(client)
        slots[client] = slot
        return slot
