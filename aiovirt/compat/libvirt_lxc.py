"""A blocking drop-in for libvirt-python's ``libvirt_lxc``: ``import
aiovirt.compat.libvirt_lxc as libvirt_lxc``.

* ``lxcOpenNamespace``: aiovirt's ``Domain.lxc_open_namespace`` (LXC_PROC_DOMAIN_OPEN_NAMESPACE;
  the descriptors come over the UNIX socket and are the caller's to close);
* ``lxcEnterCGroup``: not remote: libvirt runs it in the client library, moving the calling
  process into the container's cgroup on the local host; aiovirt does not do that and raises
  VIR_ERR_NO_SUPPORT (as do libvirt's other client-side LXC helpers, lxcEnterNamespace and
  lxcEnterSecurityLabel, which libvirt-python does not expose either).
"""

from __future__ import annotations

from typing import Any

from . import aio
from .errors import TRANSLATED, from_exception
from .libvirt import _stepped, _unwrap

__all__ = ["lxcEnterCGroup", "lxcOpenNamespace"]


async def open_namespace(domain: aio.virDomain, flags: int = 0) -> list[int]:
    try:
        return list(await aio.handle(domain).lxc_open_namespace(flags))
    except TRANSLATED as exc:
        raise from_exception(exc) from None


def lxcOpenNamespace(domain: Any, flags: int) -> list[int]:  # noqa: N802
    """The container's namespace file descriptors (the caller closes them)."""
    target = _unwrap(domain)
    return _stepped(lambda: open_namespace(target, flags), target)  # type: ignore[no-any-return]


def lxcEnterCGroup(domain: Any, flags: int) -> int:  # noqa: N802
    """Not remote: libvirt's client library moves the calling process into the
    container's cgroup on the local host; not provided (raises VIR_ERR_NO_SUPPORT)."""
    raise aio._no_support("virDomainLxcEnterCGroup (client-side, acts on the calling process)")
