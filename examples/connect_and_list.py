"""Connect to a daemon and list its domains with their state.

    python examples/connect_and_list.py [URI]      (default: qemu:///system)
"""

import asyncio
import sys

import aiovirt


async def main(uri: str) -> None:
    async with aiovirt.connect(uri) as conn:
        version = await conn.get_lib_version()
        print(f"{await conn.hostname()}: libvirt {version // 1000000}.{version // 1000 % 1000}."
              f"{version % 1000}")
        for dom in await conn.list_domains():
            state, _ = await dom.state()
            print(f"  {dom.name:30} {dom.uuid}  {state.name.lower()}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "qemu:///system"))
