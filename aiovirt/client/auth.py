"""Authenticating a socket: what ``AUTH_LIST`` offers decides what the client does.

``authenticate`` runs between ``AUTH_LIST`` and the rest of the handshake on every socket of a
connection.  ``none`` needs nothing; ``polkit`` is one call (the daemon asks polkit about our
UNIX credentials); SASL is not supported yet and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import AuthenticationError
from ..protocol import remote

if TYPE_CHECKING:
    from .channel import Channel
    from .uri import ConnectionURI

__all__ = ["AUTH_NONE", "AUTH_POLKIT", "AUTH_SASL", "authenticate"]

AUTH_NONE, AUTH_SASL, AUTH_POLKIT = 0, 1, 2
_NAMES = {AUTH_NONE: "none", AUTH_SASL: "sasl", AUTH_POLKIT: "polkit"}
_P = remote.PROCEDURES


async def authenticate(channel: Channel, offered: list[int], uri: ConnectionURI,
                       credentials: Any = None) -> None:
    """Satisfy the server's ``offered`` authentication types on ``channel``."""
    if not offered or AUTH_NONE in offered:
        return
    if AUTH_POLKIT in offered:
        await channel.call(_P[remote.REMOTE_PROC_AUTH_POLKIT])
        return
    wanted = ", ".join(_NAMES.get(t, str(t)) for t in offered)
    raise AuthenticationError(f"the server requires authentication ({wanted}); "
                              "aiovirt does not support it yet")
