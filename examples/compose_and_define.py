"""Compose a guest from profiles against a host's capabilities, define it, store typed
application data in its metadata, and read everything back.

    python examples/compose_and_define.py [URI]   (default: qemu:///system)

The composition is pure (no daemon needed); only the capabilities and the define come from
the host.
"""

import asyncio
import sys
import uuid

import aiovirt
from aiovirt.compose import compose

APP = "https://example.org/xmlns/inventory/1"


async def main(uri: str) -> None:
    async with aiovirt.connect(uri) as conn:
        domcaps = await conn.domain_capabilities(virttype="kvm", machine="q35")
        name = f"composed-{uuid.uuid4().hex[:8]}"
        result = compose(f"<domain><name>{name}</name></domain>",
                         ["kvm-base", "virtio-linux", "guest-agent", "q35-hotplug", "usb3"],
                         params={"count": "6", "kvm-base.memory": "512"},
                         caps=await conn.capabilities(), domcaps=domcaps)
        print(result.explain())
        dom = await conn.define_xml(result.xml)
        try:
            await dom.write_metadata({"owner": "team-a", "tier": 2, "tags": ["web", "eu"]},
                                     namespace=APP, prefix="inv")
            print(f"defined {dom.name}; its metadata:",
                  await dom.read_metadata(namespace=APP))
        finally:
            await dom.undefine()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "qemu:///system"))
