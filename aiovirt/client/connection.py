"""``RpcConnection``: calls, lanes, events and lifetime over one or more sockets to a daemon.

Quick calls share the main socket; procedures that can keep libvirtd busy for long (starting,
stopping, saving, migrating guests...) go to extra sockets, the *lanes*, opened on demand, so a
slow call never sits in front of a quick one (libvirtd serves at most ``max_client_requests``
calls per socket at a time and stops reading that socket meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import operator
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from types import EllipsisType
from typing import Any, Generic, Self, TypeVar

import anyio
import anyio.abc

from ..checks import check_count as _check_count
from ..checks import check_number as _check_number
from ..errors import AiovirtError, CallTimeout, ConnectionClosed, ConnectionFailed
from ..protocol import lxc, qemu, remote
from ..protocol.wire import EventMessage
from ..protocol.xdr import ProcedureInfo
from .auth import AuthCallback, Credentials
from .backend import asyncio_loop
from .channel import DEFAULT_EVENT_BATCH_WINDOW, Channel
from .config import resolve_uri
from .dialers import Dialer, dial
from .events import Registration, event_callback_id, event_family
from .limits import DEFAULT_MAX_CLIENT_REQUESTS, read_max_client_requests
from .transport import Transport
from .offloop import OnLoop, stepping
from .reconnect import ConnectionState, Reconnect, StateChange
from .uri import ConnectionURI, parse_uri

_REMOTE = remote.PROGRAM

__all__ = ["RpcConnection", "SLOW_PROCEDURES", "StateChanges", "connect"]

# Procedures that may hold a libvirtd worker for long (they talk to QEMU's monitor, wait for a
# guest, or move data).  They run on the lanes.
_SLOW_PREFIXES = (
    "domain_create", "domain_destroy", "domain_shutdown", "domain_reboot", "domain_reset",
    "domain_suspend", "domain_resume", "domain_save", "domain_restore", "domain_managed_save",
    "domain_core_dump", "domain_snapshot_create", "domain_revert_to_snapshot",
    "domain_checkpoint_create", "domain_migrate", "domain_block_", "domain_attach_device",
    "domain_detach_device", "domain_update_device", "domain_pm_", "domain_fs",
    "domain_set_memory", "domain_set_vcpus", "domain_send_key", "domain_get_guest_info",
    "domain_interface_addresses", "domain_get_hostname", "domain_set_time", "domain_get_time",
    "domain_start_dirty_rate", "domain_get_job", "domain_abort_job", "domain_memory_",
    "storage_vol_create", "storage_vol_wipe", "storage_vol_resize", "storage_pool_build",
    "storage_pool_create", "storage_pool_refresh", "storage_pool_delete", "network_create",
    "network_destroy", "node_device_create", "node_device_destroy",
)
SLOW_PROCEDURES: frozenset[str] = frozenset(
    p.name for p in remote.PROCEDURES.values() if p.name.startswith(_SLOW_PREFIXES))

# Calls written to one socket at most (while none of them is slow): beyond the daemon's
# max_client_requests they wait unread in its socket, so it never idles waiting for our next
# call.  32 is where the daemon's and our CPU per call stop falling (benchmarks/README.md).
DEFAULT_PIPELINE_DEPTH = 32
RECONNECT_ATTEMPT_LIMIT = 60.0   # seconds for one reconnection attempt, when nothing else bounds it


_load = operator.attrgetter("load")   # a channel's calls out and queued


def _timed_out(procedure: ProcedureInfo, timeout: float) -> CallTimeout:
    return CallTimeout(f"{procedure.name}: no reply within {timeout:g} s (whether it took "
                       "effect on the daemon is unknown)")


class _Tasks:
    """Owns a connection's background tasks: in a task group (``async with``) or on the
    running asyncio loop (``await connect()``), cancelled and awaited by ``aclose``.  Under a
    task group each task runs in a cancel scope of its own: the group's scope also holds the
    caller's ``async with`` block, which ``close()`` inside it must not cancel."""

    def __init__(self, group: anyio.abc.TaskGroup | None) -> None:
        self._group = group
        self._tasks: set[asyncio.Task] = set()
        self._scopes: set[anyio.CancelScope] = set()

    def start(self, fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        if self._group is not None:
            scope = anyio.CancelScope()
            self._scopes.add(scope)

            async def scoped() -> None:
                try:
                    with scope:
                        await fn()
                finally:
                    self._scopes.discard(scope)

            self._group.start_soon(scoped, name=name)
            return
        loop = asyncio_loop()
        assert loop is not None   # without a task group, connections live on asyncio only
        task = loop.create_task(fn(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        if self._group is not None:
            for scope in list(self._scopes):
                scope.cancel()
            return
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # ``wait``, not ``gather``: cancelled itself, gather raised a child's
            # CancelledError, which the caller's cancel scope took for a foreign one
            await asyncio.wait(tasks)


class StateChanges(anyio.abc.ObjectReceiveStream[StateChange]):
    """What ``state_changes()`` returns: anyio's memory stream, closed when it is dropped
    (``async for ...: break`` leaves it to the collector), so the connection forgets it.
    A finalizer, not ``__del__``, closes it: dropped in a reference cycle, the memory
    stream's own ``__del__`` could run first and warn that it was never closed."""

    def __init__(self, receive: anyio.abc.ObjectReceiveStream[StateChange]) -> None:
        self._receive = receive
        weakref.finalize(self, receive.close)  # type: ignore[attr-defined]

    async def receive(self) -> StateChange:
        return await self._receive.receive()

    def receive_nowait(self) -> StateChange:
        return self._receive.receive_nowait()  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        self._receive.close()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        self.close()


class RpcConnection:
    """An open connection to a libvirt daemon.

    ``rpc`` reaches every REMOTE procedure as a typed coroutine (``qemu_rpc`` and ``lxc_rpc``
    the QEMU and LXC ones).  It knows nothing of the object API: ``aiovirt.Connection`` joins the
two.
    """

    def __init__(self, uri: ConnectionURI, *, max_in_flight: int | None, lanes: int,
                 keepalive: tuple[float, int] | None, readonly: bool,
                 pipeline_depth: int | None = None,
                 slow_procedures: frozenset[str], native: bool = True,
                 dialer: Dialer = dial, call_timeout: float | None = None,
                 reconnect: Reconnect | None = None, auth: Any = None,
                 event_batch_window: float = 0.0, connect_timeout: float | None = None) -> None:
        # the dialer sees read-only too: a tunnel then reaches the daemon's read-only socket
        self.uri = dataclasses.replace(uri, readonly=True) if readonly else uri
        self.event_batch_window = event_batch_window
        self.credentials = auth
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.native = native
        self.dialer = dialer
        # None: the daemon's own max_client_requests where it can be read (a local UNIX
        # socket), else libvirt's default; read again on every reconnection
        self.max_in_flight = max_in_flight or DEFAULT_MAX_CLIENT_REQUESTS
        self._learn_in_flight = max_in_flight is None
        self.pipeline_depth = pipeline_depth or DEFAULT_PIPELINE_DEPTH
        # The test driver with a node file gives every socket its own private state: a lane
        # would not see the main socket's objects, so such connections use one socket.
        self.lanes = 0 if uri.driver == "test" and uri.path not in ("/default", "") else lanes
        self.keepalive = keepalive
        self.readonly = readonly
        self.slow_procedures = frozenset(
            number for number, p in remote.PROCEDURES.items() if p.name in slow_procedures)
        self.rpc = remote.RemoteCalls(self.start)
        self.qemu_rpc = qemu.QemuCalls(self.start)
        self.lxc_rpc = lxc.LxcCalls(self.start)
        # under asyncio a call's reply slot is a bare future the caller can await itself
        self._bare_waiters = asyncio_loop() is not None
        self._main: Channel | None = None
        self._lanes: list[Channel] = []
        self._opening: set[Channel] = set()   # lanes still in their handshake
        # the sockets of streams (each its own, with lanes): close() ends them too
        self._stream_sockets: weakref.WeakSet[Channel] = weakref.WeakSet()
        self._lane_lock = anyio.Lock()
        self._spare_opening = False  # a background task is opening a lane for quick calls
        self._tasks: _Tasks | None = None
        self._subscriptions: dict[tuple[str, int], Registration] = {}   # by callback id
        self._registrations: dict[tuple[Any, ...], Registration] = {}   # by kind
        self._closed = False
        self._state = ConnectionState.CONNECTED
        self._watchers: list[anyio.abc.ObjectSendStream[StateChange]] = []
        self._reconnecting = False
        self._back: anyio.Event | None = None   # set when a reconnection ends, either way
        self._lost_signal: anyio.Event | None = None   # set on a loss, for the supervisor

    # -- lifetime -------------------------------------------------------------------------------
    async def _open(self, tasks: _Tasks) -> None:
        self._tasks = tasks
        self._main = await self._open_channel("main")
        if self.reconnect is not None:
            tasks.start(self._supervise, "aiovirt reconnect")

    async def _open_channel(self, name: str) -> Channel:
        """Connect a socket and shake hands.  A lane's handshake is bounded by the keepalive
        window and fails at once if the main socket dies meanwhile (a stopped daemon would
        otherwise hold every caller waiting for that lane)."""
        assert self._tasks is not None
        transport = await self.dialer(self.uri, self._tasks.start, self.native)
        if name == "main" and self._learn_in_flight:
            self.max_in_flight = self._in_flight_for(transport)
        channel = Channel(transport, max_in_flight=self.max_in_flight, on_event=self._dispatch,
                          name=name, slow=self.slow_procedures,
                          pipeline_depth=max(self.pipeline_depth, self.max_in_flight),
                          on_closed=self._main_lost if name == "main" else None,
                          batch_window=self.event_batch_window)
        main = self._main
        if name != "main" and main is not None and main.closed is not None:
            channel.fail(main.closed)    # a lane of a connection that died meanwhile
        self._opening.add(channel)
        try:
            with anyio.fail_after(self._handshake_limit(name)):
                await channel.open(self.uri.remote_name, 1 if self.readonly else 0,
                                   uri=self.uri, credentials=self.credentials)
        except TimeoutError:
            error = ConnectionClosed(f"{name} socket: no answer to the handshake within "
                                     f"{self._handshake_limit(name):g} s")
            channel.fail(error)
            raise error from None
        except BaseException:
            channel.fail(ConnectionClosed(f"{name} socket: handshake failed"))
            raise
        finally:
            self._opening.discard(channel)
        if self.keepalive is not None and channel.keepalive_supported:
            self._start_keepalive(channel, *self.keepalive)
        if name == "stream":
            self._stream_sockets.add(channel)
        return channel

    def _start_keepalive(self, channel: Channel, interval: float, count: int) -> None:
        assert self._tasks is not None
        channel.keepalive, channel.keepalive_running = (interval, count), True
        self._tasks.start(channel.keepalive_loop, f"aiovirt {channel.name} keepalive")

    def set_keepalive(self, interval: float, count: int) -> bool:
        """libvirt's ``virConnectSetKeepAlive``: from now on, ping a quiet daemon after
        ``interval`` seconds and declare it dead after ``count`` unanswered intervals (0:
        after one quiet interval); ``interval <= 0`` stops keepalive.  Every socket,
        now and later (lanes, reconnections).  False if the daemon has no keepalive."""
        if count < 0:
            raise ValueError(f"keepalive count must be >= 0, not {count}")
        self.keepalive = (float(interval), count) if interval > 0 else None
        supported = False
        for channel in [self._main, *self._lanes]:
            if channel is None or channel.closed is not None or \
                    not channel.keepalive_supported:
                continue
            supported = True
            if channel.keepalive_running:
                channel.set_keepalive(self.keepalive)
            elif self.keepalive is not None and self._tasks is not None:
                self._start_keepalive(channel, *self.keepalive)
        return supported

    def _in_flight_for(self, transport: Transport) -> int:
        """What the daemon works on at once when the caller did not say: its own
        max_client_requests where it can be read (a local UNIX socket), else libvirt's
        default."""
        if self.uri.transport != "unix":
            return DEFAULT_MAX_CLIENT_REQUESTS
        sock = transport.raw_socket
        limit = read_max_client_requests(sock) if sock is not None else None
        return max(1, limit or DEFAULT_MAX_CLIENT_REQUESTS)

    def _handshake_limit(self, name: str) -> float:
        """How long a handshake may take: the main one as long as the caller lets it (they
        can bound ``connect``), a lane's, or a reconnection's, as long as keepalive would wait
        for a silent server."""
        if self.keepalive is None or (name == "main" and not self._reconnecting):
            return math.inf
        interval, count = self.keepalive
        return interval * (count + 1)

    def _attempt_limit(self, policy: Reconnect, began: float) -> float:
        """How long one reconnection attempt (dial, handshake, subscriptions) may take:
        ``connect_timeout``, the keepalive window, what is left of ``give_up_after``,
        whichever is least; ``RECONNECT_ATTEMPT_LIMIT`` when none is set (a peer that
        accepts and never answers must not hold the loop on one attempt for ever)."""
        limits = []
        if self.connect_timeout is not None:
            limits.append(self.connect_timeout)
        if self.keepalive is not None:
            interval, count = self.keepalive
            limits.append(interval * (count + 1))
        if policy.give_up_after is not None:
            limits.append(max(0.001, policy.give_up_after - (time.monotonic() - began)))
        return min(limits, default=RECONNECT_ATTEMPT_LIMIT)

    def _main_lost(self, error: BaseException) -> None:
        """Without its main socket a connection is dead: fail the lanes' calls too, and the
        lanes still shaking hands.  With a ``reconnect`` policy, start reconnecting and keep
        the subscriptions; without one, end them."""
        if self._reconnecting:
            return          # a socket of the reconnection failed: the loop handles it
        for channel in [*self._lanes, *self._opening]:
            channel.fail(error)
        if self._lost_signal is not None and not self._closed:
            # called from the transport's callbacks: the supervisor task does the work
            self._reconnecting = True
            self._set_state(ConnectionState.LOST, str(error))
            self._lost_signal.set()
            return
        if not self._closed:
            self._set_state(ConnectionState.LOST, str(error))
        for subscription in list(self._subscriptions.values()):
            subscription.close()

    async def _supervise(self) -> None:
        """With a reconnect policy: wait for the main socket's loss, then reconnect; again and
        again, for the connection's life."""
        while not self._closed:
            self._back = anyio.Event()
            self._lost_signal = anyio.Event()
            await self._lost_signal.wait()
            await self._reconnect_loop()

    async def _reconnect_loop(self) -> None:
        """Open a new main socket (backing off between attempts), register every live
        subscription again and tell its iterators to resynchronise; or give up."""
        policy = self.reconnect
        assert policy is not None
        began, attempt, last = time.monotonic(), 0, ""
        try:
            while not self._closed:
                attempt += 1
                limit = self._attempt_limit(policy, began)
                try:
                    with anyio.fail_after(limit):
                        channel = await self._open_channel("main")
                        self._main, self._lanes[:] = channel, []
                        await self._resubscribe()
                except (AiovirtError, TimeoutError) as exc:
                    last = f"{type(exc).__name__}: {exc}" if isinstance(exc, AiovirtError) else \
                        f"no connection within {limit:g} s (one attempt's bound)"
                    if self._main is not None and self._main.closed is None:
                        self._main.fail(ConnectionClosed("reconnection attempt failed"))
                    if policy.gives_up(attempt, time.monotonic() - began):
                        break
                    await anyio.sleep(policy.delay(attempt))
                    continue
                self._reconnecting = False
                self._set_state(ConnectionState.RECONNECTED, f"after {attempt} attempt"
                                f"{'s' if attempt > 1 else ''}", attempt)
                return
            self._reconnecting = False
            if not self._closed:
                self._set_state(ConnectionState.CLOSED, f"gave up reconnecting after {attempt} "
                                f"attempts: {last}", attempt)
            for subscription in list(self._subscriptions.values()):
                subscription.close()
        finally:
            self._reconnecting = False
            if self._back is not None:
                self._back.set()

    async def _resubscribe(self) -> None:
        """Callback ids belong to a connection: register each live kind again, route by the
        new ids, and deliver a ``Resync`` to its subscribers (they missed events)."""
        old, self._subscriptions = self._subscriptions, {}
        for registration in list(old.values()):
            if not registration.subscribers:
                continue
            family = registration.family or registration.key[0]
            assert registration.register is not None
            callback_id = await registration.register()
            registration.callback_id = callback_id
            self._subscriptions[(family, callback_id)] = registration
            registration.resynced()

    # -- state ------------------------------------------------------------------------------------
    @property
    def state(self) -> ConnectionState:
        """CONNECTED, LOST (reconnecting, if a policy says so), RECONNECTED or CLOSED."""
        return self._state

    def state_changes(self, max_buffer: int = 64) -> StateChanges:
        """A stream of the connection's state changes from now on (``async for``); at most
        ``max_buffer`` unread changes are kept, newer ones are dropped.  Closed or dropped
        (``break`` out of its loop), it is fed no more."""
        _check_count("max_buffer", max_buffer, 1, 1 << 20, optional=False)
        for watcher in list(self._watchers):
            if not watcher.statistics().open_receive_streams:
                watcher.close()
                self._watchers.remove(watcher)
        send, receive = anyio.create_memory_object_stream[StateChange](max_buffer)
        self._watchers.append(send)
        return StateChanges(receive)

    def _set_state(self, state: ConnectionState, reason: str = "", attempt: int = 0) -> None:
        self._state = state
        change = StateChange(state, reason, attempt)
        for watcher in list(self._watchers):
            try:
                watcher.send_nowait(change)
            except anyio.WouldBlock:
                pass
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                watcher.close()
                self._watchers.remove(watcher)

    async def close(self) -> None:
        """Close every socket, streams' included (telling the daemon first), and stop the
        background tasks."""
        if self._closed:
            return
        self._closed = True
        channels = [c for c in [self._main, *self._lanes, *self._stream_sockets]
                    if c is not None]
        for channel in channels:
            channel.closing = "the connection was closed"

        async def say_goodbye(channel: Channel) -> None:
            with contextlib.suppress(AiovirtError):
                await channel.call(remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_CLOSE])

        # Tell the daemon on every socket at once, bounded; a socket whose slots are all taken
        # by calls the server has not answered is just closed (a goodbye would queue).
        with anyio.move_on_after(2, shield=True):
            async with anyio.create_task_group() as group:
                for channel in channels:
                    if channel.closed is None and channel.protocol.writes_now:
                        group.start_soon(say_goodbye, channel)
        for channel in channels:
            channel.fail(ConnectionClosed("the connection was closed"))
        for subscription in list(self._subscriptions.values()):
            subscription.close()
        self._set_state(ConnectionState.CLOSED, "closed")
        for watcher in self._watchers:
            watcher.close()
        if self._back is not None:
            self._back.set()
        if self._tasks is not None:
            await self._tasks.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def is_alive(self) -> bool:
        """True while the main socket is open."""
        return not self._closed and self._main is not None and self._main.closed is None

    # -- calls ----------------------------------------------------------------------------------
    async def call(self, procedure: ProcedureInfo, args: Any = None,
                   timeout: float | None | EllipsisType = ..., *,
                   lane: bool | None = None) -> Any:
        """Call one procedure with its argument struct; returns its result struct (or None).

        Slow procedures (``slow_procedures``) run on the lanes; quick ones on the main socket,
        overflowing to a lane with a free slot while the main socket is full.  ``lane=True``
        or ``False`` forces a lane or the main socket.  ``timeout``: seconds before the call
        fails with ``CallTimeout`` (None: no limit; left out: ``call_timeout``).  Whether a
        timed-out call took effect on the daemon is unknown; the connection stays usable.
        """
        if timeout is ...:
            timeout = self.call_timeout
        elif timeout is not None:   # given for this call: checked as connect() checks its own
            _check_number("timeout", timeout, 0, math.inf, seconds=True)
        if timeout is not None:
            if stepping():   # a time limit needs the running loop
                return await OnLoop(self.call(procedure, args, timeout, lane=lane))
            with anyio.move_on_after(timeout):
                return await self._route(procedure, args, lane)
            raise _timed_out(procedure, timeout)   # only reached when the deadline passed
        # No time limit (the usual case): when the socket is known at once, send and wait
        # right here (``Channel.call`` inlined), one coroutine frame instead of three.
        channel = self._quick_channel(procedure, lane) or self._lane_now()
        if channel is None:
            if stepping():   # waiting for a lane or a reconnection needs the running loop
                return await OnLoop(self.call(procedure, args, timeout, lane=lane))
            return await self._route(procedure, args, lane)
        serial, waiter = channel._send(procedure, args)
        try:
            return await waiter
        except BaseException:
            channel._abandon(serial)
            raise

    def start(self, procedure: ProcedureInfo, args: Any = None,
              timeout: float | None | EllipsisType = ...,
              lane: bool | None = None) -> Awaitable[Any]:
        """``call`` for callers that await at once: under asyncio, with no time limit and the
        socket known, the call is sent now and its reply slot (a future) returned, saving a
        coroutine per call; otherwise the ``call`` coroutine.  (No keyword-only parameter:
        on Python 3.11 it would keep every call from the interpreter's quick path.)  Errors (a closed connection,
        arguments that cannot be encoded) always surface when the result is awaited."""
        if timeout is ...:
            timeout = self.call_timeout
        if timeout is None and self._bare_waiters:
            try:
                # ``_quick_channel``'s commonest answer inlined (the main socket, open, with
                # room for a quick call): a Python call less on every call
                main = self._main
                if main is not None and main.closed is None and not self._closed and \
                        lane is None and (procedure.number not in self.slow_procedures or
                                          procedure.program != _REMOTE):
                    protocol = main.protocol
                    out = len(protocol._pending)
                    if not protocol._queued and (out < protocol.max_in_flight or (
                            out < protocol.pipeline_depth and not protocol._slow_out)):
                        channel = main
                    else:
                        channel = self._quick_channel(procedure, lane) or self._lane_now()
                else:
                    channel = self._quick_channel(procedure, lane) or self._lane_now()
                if channel is not None:
                    serial, waiter = channel._send(procedure, args)
                    if serial in channel.protocol._queued:
                        # a queued call whose caller leaves must not be sent later
                        waiter.add_done_callback(functools.partial(channel._left, serial))
                    return waiter   # type: ignore[no-any-return]
            except Exception:   # noqa: BLE001 - raised again by ``call`` when awaited
                pass
        if stepping():
            return OnLoop(self.call(procedure, args, timeout, lane=lane))
        return self.call(procedure, args, timeout, lane=lane)

    async def _route(self, procedure: ProcedureInfo, args: Any, lane: bool | None) -> Any:
        """Send the call on the right socket and wait for its reply (while reconnecting,
        first wait for the connection to come back, if the policy says so)."""
        channel = self._quick_channel(procedure, lane)
        if channel is None:
            channel = await self._waited_channel(procedure, lane)
        return await channel.call(procedure, args)

    def _quick_channel(self, procedure: ProcedureInfo, lane: bool | None) -> Channel | None:
        """The socket for a call when it is known without waiting; None when it takes
        waiting (a reconnection the call waits for, a slow lane).  Raises
        ``ConnectionClosed``."""
        main = self._main
        if main is None or self._closed:
            raise ConnectionClosed("the connection is closed")
        if main.closed is not None:
            if not (self._reconnecting and self.reconnect is not None and
                    self.reconnect.wait_calls and self._back is not None):
                raise ConnectionClosed(str(main.closed)) from main.closed
            return None
        if not self.lanes or lane is False:
            return main
        if lane or (procedure.number in self.slow_procedures and
                    procedure.program == _REMOTE):
            return None
        protocol = main.protocol   # ``protocol.writes_now`` inlined (a property costs a call)
        out = len(protocol._pending)
        if not protocol._queued and (out < protocol.max_in_flight or (
                out < protocol.pipeline_depth and not protocol._slow_out)):
            return main
        return self._quick_overflow()

    async def _waited_channel(self, procedure: ProcedureInfo, lane: bool | None) -> Channel:
        """The socket for a call ``_quick_channel`` could not place: after the reconnection
        it waits for, or a slow lane."""
        main = self._main
        if main is not None and main.closed is not None:
            assert self._back is not None
            await self._back.wait()
            main = self._main
            if self._closed or main is None or main.closed is not None:
                raise ConnectionClosed(str(main.closed if main else "the connection is closed"))
            channel = self._quick_channel(procedure, lane)
            if channel is not None:
                return channel
        return await self._slow_lane()

    async def call_with_fds(self, procedure: ProcedureInfo, args: Any = None,
                            fds: Sequence[int] = (),
                            timeout: float | None | EllipsisType = ...) -> tuple[Any, list[int]]:
        """A call that sends file descriptors and/or receives some (``*_WITH_FDS``), on the
        main socket: returns ``(result, fds)``.  The FDs sent stay the caller's; the ones
        returned are new and the caller must close them.  Only a UNIX socket under asyncio
        carries FDs: elsewhere ``TransportError`` says why, before anything is sent."""
        if stepping():   # FDs travel only with the running loop
            return await OnLoop(self.call_with_fds(  # type: ignore[no-any-return]
                procedure, args, fds, timeout))
        main = self._main
        if main is None or self._closed or main.closed is not None:
            raise ConnectionClosed("the connection is closed")
        if timeout is ...:
            timeout = self.call_timeout
        if timeout is None:
            return await main.call_with_fds(procedure, args, fds)
        with anyio.move_on_after(timeout):
            return await main.call_with_fds(procedure, args, fds)
        raise _timed_out(procedure, timeout)   # only reached when the deadline passed

    def _open_lanes(self) -> list[Channel]:
        self._lanes[:] = [c for c in self._lanes if c.closed is None]
        return self._lanes

    def _idle_lane(self) -> Channel | None:
        """An idle lane, else the least busy one once all are open; None: open another.
        (One pass, stopping at the first idle lane: every slow call asks.)"""
        best, best_load, count = None, 0, 0
        for channel in self._lanes:
            if channel.closed is not None:
                return self._idle_lane() if self._open_lanes() else None   # closed ones out
            load = channel.load
            if not load:
                return channel
            count += 1
            if best is None or load < best_load:
                best, best_load = channel, load
        return best if count >= self.lanes else None

    def _lane_now(self) -> Channel | None:
        """For a call ``_quick_channel`` could not place: the lane it takes without waiting,
        if there is one and the main socket is up (else it waits in ``_route``)."""
        main = self._main
        if main is None or main.closed is not None:
            return None
        return self._idle_lane()

    async def _slow_lane(self) -> Channel:
        """An idle lane, else a new one while the limit allows, else the least busy lane.

        Spreading slow calls keeps each lane's slots free for more; if no lane can be opened
        the call goes to the main socket rather than failing."""
        lane = self._idle_lane()
        if lane is not None:
            return lane
        async with self._lane_lock:
            lane = self._idle_lane()
            if lane is not None:
                return lane
            try:
                lane = await self._open_channel(f"lane{len(self._lanes) + 1}")
            except AiovirtError:
                lane = None
            if lane is not None:
                self._lanes.append(lane)
                return lane
            lanes = self._open_lanes()
            if not lanes:
                assert self._main is not None
                return self._main
            return min(lanes, key=_load)

    def _quick_overflow(self) -> Channel:
        """For a quick call while the main socket is full: a lane with a free slot, else the
        main socket's queue.  A quick call never waits for a lane to open; locally one is
        opened in the background for the next.  Across a network quick calls open none (a
        lane there costs a TLS handshake or an ssh process; the main socket pipelines)."""
        best, best_load, lanes = None, 0, 0
        for channel in self._lanes:       # one pass: this runs for every overflowing call
            if channel.closed is not None:
                continue
            lanes += 1
            protocol = channel.protocol
            if protocol.writes_now and (best is None or protocol.pending < best_load):
                best, best_load = channel, protocol.pending
        if best is not None:
            return best
        if (lanes < self.lanes and not self._spare_opening
                and self.uri.transport == "unix"):
            assert self._tasks is not None
            self._spare_opening = True  # set now: a burst of overflowing calls spawns one task
            self._tasks.start(self._open_spare_lane, "aiovirt open lane")
        assert self._main is not None
        return self._main

    async def _open_spare_lane(self) -> None:
        try:
            async with self._lane_lock:
                if len(self._open_lanes()) < self.lanes and self.is_alive:
                    try:
                        channel = await self._open_channel(f"lane{len(self._lanes) + 1}")
                    except AiovirtError:
                        return  # quick calls keep using the main socket
                    self._lanes.append(channel)
        finally:
            self._spare_opening = False

    # -- events ---------------------------------------------------------------------------------
    def _dispatch(self, message: EventMessage) -> None:
        callback_id = message.callback_id
        if callback_id is None:
            callback_id = event_callback_id(message)   # the close event's own id
            if callback_id is None:
                return
        registration = self._subscriptions.get((event_family(message.procedure.name),
                                                callback_id))
        if registration is not None:
            for subscriber in registration.subscribers:   # (``Registration.deliver``)
                subscriber.deliver(message)

    def _registration(self, key: tuple[Any, ...]) -> Registration:
        registration = self._registrations.get(key)
        if registration is None:
            registration = self._registrations[key] = Registration(key)
        return registration

    def _forget_registration(self, registration: Registration) -> None:
        """Drop ``registration`` from the table if nothing holds it any more (no subscriber,
        no callback on the daemon, nobody waiting for it): one per kind ever used (a
        domain's own events, say) would pile up for the connection's life."""
        if (not registration.subscribers and registration.callback_id is None
                and registration.settling is None
                and not registration.lock.statistics().tasks_waiting
                and self._registrations.get(registration.key) is registration):
            del self._registrations[registration.key]

    def _add_subscription(self, family: str, callback_id: int,
                          subscription: Registration) -> None:
        self._subscriptions[(family, callback_id)] = subscription

    def _remove_subscription(self, family: str, callback_id: int) -> None:
        self._subscriptions.pop((family, callback_id), None)

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> bool:
        """Run ``fn`` as one of the connection's background tasks (cancelled by close());
        False if the connection has none (not open)."""
        if self._tasks is None or self._closed:
            return False
        self._tasks.start(fn, name)
        return True

    # -- diagnostics ----------------------------------------------------------------------------
    @property
    def channels(self) -> list[Channel]:
        """The open sockets: the main one first, then the lanes."""
        return [c for c in [self._main, *self._lanes] if c is not None]


C = TypeVar("C", bound=RpcConnection)


MAX_LANES = 64              # sockets a connection opens beside its main one, at most
MAX_IN_FLIGHT = 65536       # calls on one socket's wire (max_in_flight, pipeline_depth)


def _check_keepalive(keepalive: object) -> None:
    """``keepalive`` is None or (interval seconds > 0, missed intervals >= 0)."""
    if keepalive is None:
        return
    if not isinstance(keepalive, tuple | list) or len(keepalive) != 2:
        raise ValueError(f"keepalive must be (interval seconds, missed intervals) or None, "
                         f"not {keepalive!r:.60}")
    interval, count = keepalive
    if isinstance(interval, bool) or not isinstance(interval, int | float) or \
            not 0 < interval < math.inf:
        raise ValueError(f"keepalive interval must be more than 0 seconds, not {interval!r:.60} "
                         "(keepalive=None turns keepalive off)")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"keepalive count (missed intervals) must be an integer of 0 or more, "
                         f"not {count!r:.60}")


class connect(Generic[C]):  # noqa: N801 - reads as a function: ``await connect(uri)`` / ``async with``
    """Open a connection to ``uri``: ``conn = await connect(uri)`` or ``async with connect(uri)``.

    Every option is checked before anything is dialed (``ValueError`` naming it): sizes are
    integers, ``lanes`` at most ``MAX_LANES`` (64), ``max_in_flight`` and ``pipeline_depth``
    at most ``MAX_IN_FLIGHT`` (65536); times are positive numbers of seconds.

    ``max_in_flight``: the calls the daemon works on at once per socket.  None (the
    default): over a local UNIX socket the daemon's own ``max_client_requests``, read from
    the configuration it runs with when we may inspect it (see ``aiovirt.client.limits``),
    else libvirt's default of 5.  ``pipeline_depth`` (None: 32, or ``max_in_flight`` if
    that is more): calls written to a socket at most;
    those beyond ``max_in_flight`` wait in the daemon's socket, so it finds its next call
    there when it finishes one, and they are written only while every call out on that
    socket is quick (none of ``slow_procedures``): nothing waits behind a slow call.  More
    calls wait in FIFO order (a queued call can still be cancelled unsent; one on the wire
    runs, its reply discarded).  ``pipeline_depth=max_in_flight`` never writes ahead.
    ``lanes``: extra sockets for slow procedures, and for quick ones when the main socket
    has no room on the wire.
    ``keepalive``: (interval seconds, missed intervals) before the server is declared dead,
    or None.  ``readonly`` opens a read-only connection.  ``native_transport=False`` uses
    anyio's generic streams even on asyncio (other backends always do).
    ``call_timeout``: the default limit, in seconds, on every call (None: none); each call
    may give its own (``conn.call(..., timeout=)``, ``conn.rpc.X(..., call_timeout=)``).
    ``reconnect``: a ``Reconnect`` policy to open the connection again after a loss (daemon
    restarted, keepalive gave up), registering every live subscription again; watch it with
    ``conn.state`` / ``conn.state_changes()``.  Calls out at the moment of the loss fail with
    ``ConnectionClosed`` (their effect is unknown).
    ``uri`` None (or empty): ``LIBVIRT_DEFAULT_URI``, else ``uri_default`` of libvirt.conf;
    a name listed in libvirt.conf's ``uri_aliases`` stands for its URI (see
    ``aiovirt.client.config``).
    ``connect_timeout``: seconds for dialing and the handshake (authentication included) of
    the main socket; past it ``ConnectionFailed`` names the URI (None: no limit).
    ``auth``: for SASL, ``(user, password)``; or a callback (sync or async) given a list of
    ``aiovirt.client.auth.Credential`` to fill in (``result``); or None: auth.conf (see
    ``aiovirt.client.config``), the user name defaulting to the URI's.  What the daemon
    accepts is reused for every lane and reconnection.  SASL GSSAPI (``aiovirt[gssapi]``)
    takes the Kerberos credential cache, or ``(principal, password)``.
    ``event_batch_window``: after a read that brought events while no call waits, the
    socket rests this long (seconds; 0: never) so an event storm is read in batches: one
    wake-up per batch instead of per event, at most that much added delay on events that
    follow one another closely (a lone event, and every reply, is read at once; asyncio).
    ``dialer`` replaces how sockets are made (default: by the URI's transport, see
    ``aiovirt.client.dialers``; ``aiovirt.testing.fakepeer.memory_dialer`` for tests).
    ``connection_class`` is what gets opened: here the bare RPC connection;
    ``aiovirt.connect`` opens an ``aiovirt.Connection`` (with the object API).
    """

    connection_class: type[C] = RpcConnection  # type: ignore[assignment]

    def __init__(self, uri: str | None = None, *, max_in_flight: int | None = None,
                 pipeline_depth: int | None = None, lanes: int = 4,
                 keepalive: tuple[float, int] | None = (5.0, 5), readonly: bool = False,
                 slow_procedures: frozenset[str] = SLOW_PROCEDURES,
                 native_transport: bool = True, dialer: Dialer | None = None,
                 call_timeout: float | None = None, reconnect: Reconnect | None = None,
                 auth: tuple[str | None, str] | AuthCallback | Credentials | None = None,
                 connect_timeout: float | None = None,
                 event_batch_window: float = DEFAULT_EVENT_BATCH_WINDOW) -> None:
        _check_number("call_timeout", call_timeout, 0, math.inf, seconds=True)
        _check_number("connect_timeout", connect_timeout, 0, math.inf, seconds=True)
        _check_number("event_batch_window", event_batch_window, 0, 1, seconds=True, low=True,
                      optional=False)
        _check_count("max_in_flight", max_in_flight, 1, MAX_IN_FLIGHT)
        _check_count("pipeline_depth", pipeline_depth, 1, MAX_IN_FLIGHT)
        if pipeline_depth is not None and max_in_flight is not None and \
                pipeline_depth < max_in_flight:
            raise ValueError(f"pipeline_depth ({pipeline_depth}) must be at least "
                             f"max_in_flight ({max_in_flight})")
        _check_count("lanes", lanes, 0, MAX_LANES, optional=False)
        _check_keepalive(keepalive)
        self.connect_timeout = connect_timeout
        self._connection: C = self.connection_class(
            parse_uri(resolve_uri(uri)), max_in_flight=max_in_flight,
            pipeline_depth=pipeline_depth, lanes=lanes,
            keepalive=keepalive, readonly=readonly, slow_procedures=slow_procedures,
            native=native_transport, dialer=dialer or dial, call_timeout=call_timeout,
            reconnect=reconnect,
            auth=auth if isinstance(auth, Credentials) else Credentials(auth),
            event_batch_window=event_batch_window, connect_timeout=connect_timeout)
        self._group: anyio.abc.TaskGroup | None = None

    async def _open_main(self, tasks: _Tasks) -> None:
        """Open the connection, within ``connect_timeout`` if one is set."""
        limit = self.connect_timeout
        if limit is None:
            await self._connection._open(tasks)
            return
        try:
            with anyio.fail_after(limit):
                await self._connection._open(tasks)
        except TimeoutError:
            raise ConnectionFailed(
                f"{self._connection.uri.uri}: not connected within {limit:g} s (connect_timeout "
                "bounds dialing, the handshake and authentication)") from None

    def __await__(self) -> Generator[Any, None, C]:
        return self._open_detached().__await__()

    async def _open_detached(self) -> C:
        if asyncio_loop() is None:
            raise RuntimeError("`conn = await connect(...)` needs asyncio; under other event "
                               "loops use `async with connect(...) as conn`")
        tasks = _Tasks(None)
        try:
            await self._open_main(tasks)
        except BaseException:
            await tasks.aclose()
            raise
        return self._connection

    async def __aenter__(self) -> C:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        try:
            await self._open_main(_Tasks(self._group))
        except BaseException as exc:  # noqa: B036
            # cancel the reader/writer tasks, leave the group cleanly, report the real error
            self._group.cancel_scope.cancel()
            await self._group.__aexit__(None, None, None)
            raise exc
        return self._connection

    async def __aexit__(self, *exc_info: Any) -> None:
        # The background tasks never fail on their own (they report through the calls), so
        # the block's own exception, if any, propagates as it is, not in an ExceptionGroup.
        await self._connection.close()
        assert self._group is not None
        self._group.cancel_scope.cancel()
        await self._group.__aexit__(None, None, None)
