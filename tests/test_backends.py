"""The client is anyio code: it runs under trio, and on asyncio over anyio's generic streams."""

from __future__ import annotations

import pytest
import trio

import aiovirt


async def exercise(uri: str, **options) -> tuple[int, list[str], int]:
    async with aiovirt.connect(uri, **options) as conn:
        version = await conn.get_lib_version()
        names = [d.name for d in await conn.list_domains()]
        results = []

        async def one() -> None:
            results.append((await conn.lookup_domain(name="test")).name)

        import anyio
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        assert results == ["test"] * 50
        return version, names, len(conn.channels)


def test_under_trio(daemon):
    version, names, _ = trio.run(exercise, daemon.uri())
    assert version == 9000000 and "test" in names


def test_under_trio_over_tcp(daemon):
    version, names, _ = trio.run(exercise, daemon.uri(transport="tcp"))
    assert version == 9000000 and "test" in names


def test_awaitable_form_needs_asyncio(daemon):
    async def main() -> None:
        with pytest.raises(RuntimeError, match="async with"):
            await aiovirt.connect(daemon.uri())

    trio.run(main)


async def test_generic_streams_on_asyncio(daemon):
    version, names, _ = await exercise(daemon.uri(), native_transport=False)
    assert version == 9000000 and "test" in names


async def test_generic_streams_see_the_server_hang_up(daemon):
    async with aiovirt.connect(daemon.uri(), native_transport=False) as conn:
        await conn.rpc.connect_close()  # the daemon closes the socket after this
        with pytest.raises(aiovirt.ConnectionClosed):
            await conn.get_lib_version()
