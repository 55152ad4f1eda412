"""When to try again after a connection is lost: the policy, as plain data and arithmetic.

``Reconnect`` is what ``connect(..., reconnect=Reconnect())`` takes: exponential backoff with
jitter up to a cap, and a rule for giving up.  ``ConnectionState`` and ``StateChange`` are what
``conn.state`` and ``conn.state_changes()`` report.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

__all__ = ["ConnectionState", "Reconnect", "StateChange"]


class ConnectionState(enum.Enum):
    CONNECTED = "connected"
    LOST = "lost"                  # the daemon went away; reconnecting if a policy says so
    RECONNECTED = "reconnected"    # back: subscriptions registered again, a Resync delivered
    CLOSED = "closed"              # closed by us, or given up


@dataclass(frozen=True, slots=True)
class StateChange:
    """One change of a connection's state; ``reason`` says why (the loss, the give-up)."""

    state: ConnectionState
    reason: str = ""
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Try again after a loss: wait ``initial`` seconds, then ``factor`` times longer each
    attempt up to ``max_delay``, each wait spread by +-``jitter`` (a fraction); give up after
    ``max_attempts`` attempts or ``give_up_after`` seconds (None: never).  ``wait_calls``:
    calls made while disconnected wait for the reconnection (bounded by their timeout) rather
    than fail at once with ``ConnectionClosed``."""

    initial: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.2
    max_attempts: int | None = None
    give_up_after: float | None = None
    wait_calls: bool = True

    def __post_init__(self) -> None:
        if not self.initial > 0 or not self.max_delay >= self.initial:
            raise ValueError("reconnect delays: need 0 < initial <= max_delay")
        if not self.factor >= 1:
            raise ValueError("reconnect factor must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("reconnect jitter is a fraction in [0, 1)")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")
        if self.give_up_after is not None and not self.give_up_after > 0:
            raise ValueError("give_up_after must be more than 0 seconds (or None)")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
        base = self.initial
        for _ in range(max(attempt - 1, 0)):   # (``factor ** n`` overflows a float by n=1025)
            base *= self.factor
            if base >= self.max_delay:
                base = self.max_delay
                break
        spread = (rng or random).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return base * (1 + spread)

    def gives_up(self, attempts: int, elapsed: float) -> bool:
        """Whether to stop after ``attempts`` failed attempts, ``elapsed`` seconds since the
        loss."""
        return (self.max_attempts is not None and attempts >= self.max_attempts) or \
            (self.give_up_after is not None and elapsed >= self.give_up_after)
