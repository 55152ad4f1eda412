"""Define and start several guests concurrently, then tear them down.

    python examples/define_and_start.py [URI] [COUNT]   (default: test:///default, 10)

Slow calls (start, destroy) go to the connection's lanes, so lookups and other quick calls
stay fast while guests boot.
"""

import asyncio
import sys
import uuid

import aiovirt

KVM_GUEST = """<domain type='{type}'><name>{name}</name><memory unit='MiB'>32</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"""


async def main(uri: str, count: int) -> None:
    virt_type = "test" if uri.startswith("test") else "kvm"
    async with aiovirt.connect(uri) as conn:
        names = [f"example-{uuid.uuid4().hex[:8]}" for _ in range(count)]

        async def bring_up(name: str) -> aiovirt.Domain:
            dom = await conn.define_xml(KVM_GUEST.format(type=virt_type, name=name))
            await dom.start()
            return dom

        doms = await asyncio.gather(*(bring_up(n) for n in names))
        for dom in doms:
            print(f"{dom.name}: id {dom.id}, {(await dom.state())[0].name.lower()}")
        await asyncio.gather(*(dom.destroy() for dom in doms))
        await asyncio.gather(*(dom.undefine() for dom in doms))
        print(f"started and removed {count} guests")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "test:///default",
                     int(sys.argv[2]) if len(sys.argv) > 2 else 10))
