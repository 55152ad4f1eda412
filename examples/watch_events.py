"""Print domain lifecycle events as they happen (Ctrl-C to stop).

    python examples/watch_events.py [URI]      (default: qemu:///system)
"""

import asyncio
import sys

import aiovirt


async def main(uri: str) -> None:
    async with aiovirt.connect(uri) as conn:
        async with conn.domain_events() as events:   # leaving the block deregisters
            async for event in events:
                if isinstance(event, aiovirt.Dropped):   # it fell behind: say how much
                    print(f"({event.count} events lost)")
                    continue
                print(f"{event.domain.name}: {event.event.name.lower()} (detail {event.detail})")


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "qemu:///system"))
    except KeyboardInterrupt:
        pass
