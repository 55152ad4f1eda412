"""A blocking drop-in for libvirt-python: ``import aiovirt.compat.libvirt as libvirt``.

Every call runs the async compat layer (``aiovirt.compat.aio``) on one private event loop
and waits for it, so any number of threads may call at once, on one connection or many, as
with libvirt-python.  The loop is run by the callers themselves, passed from one to the
next as libvirt's own client passes its socket, and by a background thread when no caller
needs it (see "the private loop" below); a caller alone steps its call without running the
loop at all, writing the call and reading the reply on its own thread, as libvirt's client
does ("a lone caller" below).  Errors are ``libvirtError``.

Events follow libvirt's model: after ``virEventRegisterDefaultImpl()``, callbacks (domain
events, ``virEventAddTimeout`` timers, ``virEventAddHandle`` watches) are queued and run on
the thread that calls ``virEventRunDefaultImpl()``, one iteration per call, which blocks
until something is due.  Without a registered implementation, callbacks run on a private
dispatcher thread (libvirt would refuse to register them).  ``aiovirt.compat.libvirtaio``
delivers them on an asyncio loop instead.

The classes (``virConnect``, ``virDomain``...) are made mechanically from the async ones:
one wrapper per method, by one factory.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import itertools
import operator
import os
import queue
import select
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Optional, TypeVar

from ..client import offloop
from ..client.backend import new_event_loop
from ..client.offloop import OnLoop
from . import aio
from .aio import COMPAT_CLASSES
from .constants import *  # noqa: F403 - libvirt-python's module exposes them all
from .constants import _LIBVIR_VERSION_NUMBER
from .errors import libvirtError

_AIOVIRT_COMPAT = True

# libvirt-python's typing aliases (code annotates callbacks with them)
_T = TypeVar("_T")
_EventCB = Callable[[int, int, int, _T], None]
_TimerCB = Callable[[int, _T], None]
_DomainCB = Callable[[Any, Any, int, int, _T], Optional[int]]

# -- the private loop -------------------------------------------------------------------------
#
# One event loop serves every connection.  Whoever needs it runs it: a caller thread with no
# other call under way runs it itself for its own call (``run_until_complete``: no hand-over
# between threads, which costs two wake-ups per call), and while one caller runs it the
# others hand their calls to it and wait (``_waiting``).  When the runner's own call is done
# it passes the loop to the longest-waiting caller, which runs it until its own call is done.
# When no caller runs it, a background thread does (events, keepalive, timers), taking it
# ``_IDLE`` seconds after the last caller let go (at once if calls handed over by callers
# that cannot run it are left), and giving it back when a caller asks for it or callers
# wait.  ``_mutex`` (``_cond``'s lock) guards the state below.

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_local = threading.local()
_mutex = threading.Lock()   # ``with _mutex``: a C call, where ``with _cond`` makes two Python ones
_cond = threading.Condition(_mutex)
_BACKGROUND = -1                 # ``_owner`` while the background thread runs the loop
_owner: int | None = None        # who runs the loop: a caller's thread ident, _BACKGROUND, None
_released = 0.0                  # when a caller last let go of it (time.monotonic)
_handed = 0                      # calls handed to the loop's runner and not finished
_IDLE = 0.005
_SLICE = 0.5   # seconds a caller reading its own reply waits before the loop takes a pass
_loop_ran = 0.0                  # when a thread last ran the loop (time.monotonic)
_stopping = [False]              # the background thread's current run was asked to stop
_background_ident = [0]          # the background thread's ident while it lives
# True while the loop's owner steps a lone call without running the loop (``_drive``); a
# caller that hands a call over meanwhile writes to ``_wake_pipe`` so that it runs the loop
_reader = [False]
_wake_pipe: tuple[int, int] | None = None


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    loop = _loop
    if loop is not None and _background_ident[0]:   # its thread runs (cheaper than is_alive)
        return loop
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            global _wake_pipe
            if _wake_pipe is None:
                _wake_pipe = os.pipe()
                os.set_blocking(_wake_pipe[0], False)
                os.set_blocking(_wake_pipe[1], False)
            loop = _loop if _loop is not None and not _loop.is_closed() else \
                new_event_loop()
            _loop = loop   # (before its thread starts: it ends when ``_loop`` is another)
            _thread = threading.Thread(target=_background, args=(loop,),
                                       name="aiovirt-compat-loop", daemon=True)
            _thread.start()
        return _loop


def _background(loop: asyncio.AbstractEventLoop) -> None:
    """The loop's runner whenever no caller runs it."""
    me = _background_ident[0] = threading.get_ident()
    try:
        _serve(loop)
    finally:
        if _background_ident[0] == me:
            _background_ident[0] = 0


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    global _owner, _released, _loop_ran
    asyncio.set_event_loop(loop)
    while True:
        with _mutex:
            # a caller letting go wakes this thread only when handed-over calls are left;
            # otherwise it looks again every _IDLE seconds (no wake-up per call)
            while _owner is not None or not (
                    _handed or time.monotonic() - _released >= _IDLE):
                if _loop is not loop:   # replaced (``_replace_loop``): a new thread runs it
                    return
                _cond.wait(_IDLE)
            if _loop is not loop:
                return
            _owner = _BACKGROUND
            _stopping[0] = False
        try:
            loop.run_forever()   # until a caller asks for the loop (``_stop_background``)
        finally:
            with _mutex:
                _owner = None
                _released = _loop_ran = time.monotonic()
                _pass_on()
                _cond.notify_all()


class _Slot:
    """One caller thread's place to wait for a handed-over call: a lock released when the
    result is in (cheaper than a ``concurrent.futures.Future`` per call), or when the thread
    is to run the loop itself (``promoted``: the runner before it let go).  ``_mutex`` guards
    ``finished``, ``promoted`` and ``fut``."""

    __slots__ = ("done", "value", "error", "ident", "finished", "promoted", "fut")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None
        self.ident = threading.get_ident()
        self.finished = False
        self.promoted = False
        self.fut: asyncio.Future[None] | None = None   # a promoted runner waits on it


_waiting: collections.deque[_Slot] = collections.deque()   # blocked callers, oldest first
_handed_slots: set[_Slot] = set()   # the slots of handed-over calls not finished
_hop_mutex = threading.Lock()
_hop_queue: list[tuple[Coroutine[Any, Any, Any], _Slot]] = []
_hop_scheduled = False


def _hop_drain() -> None:
    """On the loop: start every coroutine the caller threads handed over since the last
    drain (one wake-up of the loop serves a burst of callers)."""
    global _hop_scheduled
    with _hop_mutex:
        items = _hop_queue[:]
        _hop_queue.clear()
        _hop_scheduled = False
    create_task = asyncio.get_running_loop().create_task
    for coro, slot in items:
        create_task(_hop_call(coro, slot))


async def _hop_call(coro: Coroutine[Any, Any, Any], slot: _Slot) -> None:
    """On the loop: run one caller's coroutine and hand its outcome to the waiting thread
    (inside the task: no done-callback pass of the loop per call)."""
    global _handed
    try:
        slot.value = await coro
    except asyncio.CancelledError:
        slot.error = libvirtError("the call was cancelled (the event loop is stopping)")
        raise
    except Exception as exc:   # noqa: BLE001 - raised again on the caller's thread
        slot.error = exc
    except BaseException as exc:
        slot.error = exc
        raise
    finally:
        with _mutex:
            _handed -= 1
            _handed_slots.discard(slot)
            slot.finished = True
            fut, wake = slot.fut, not slot.promoted
            if wake and slot in _waiting:
                _waiting.remove(slot)
            yield_loop = _owner == _BACKGROUND and bool(_waiting)
        if fut is not None and not fut.done():
            fut.set_result(None)   # its thread runs the loop, waiting for this
        if wake:
            slot.done.release()
        if yield_loop:   # callers are waiting: one of them runs the loop from now on
            _stop_background(asyncio.get_running_loop())


def _stop_background(loop: asyncio.AbstractEventLoop) -> None:
    """(On the loop) stop it if the background thread runs it: a caller asks for it, or
    callers wait that can run it (a late request must not stop a caller's own run)."""
    if _owner == _BACKGROUND and not _stopping[0]:
        _stopping[0] = True   # once per run: a second stop() could outlive it
        loop.stop()


def _pass_on() -> bool:
    """(Under ``_mutex``, the loop unowned) make the longest-waiting blocked caller the
    runner and wake it; False if none waits."""
    global _owner
    while _waiting:
        slot = _waiting.popleft()
        if slot.finished:
            continue
        slot.promoted = True
        _owner = slot.ident
        slot.done.release()
        return True
    return False


def _let_go() -> None:
    """This thread stops running the loop: a blocked caller takes it over when handed-over
    calls are under way, else the background thread after ``_IDLE`` (at once when only
    callers that cannot run it wait)."""
    global _owner, _released
    with _mutex:
        _owner = None
        _reader[0] = False
        _released = time.monotonic()
        if _handed and not _pass_on():
            _cond.notify_all()


def _run_loop(loop: asyncio.AbstractEventLoop, coro: Any
              ) -> tuple[Any, BaseException | None]:
    """(Owning the loop) run it on this thread until ``coro`` (a coroutine or a future) is
    done; its value, or its error.  On the main thread, Ctrl-C stops the loop instead of
    being raised inside it (``_run_main``)."""
    global _loop_ran
    if threading.get_ident() == _main_ident[0] and callable(signal.getsignal(signal.SIGINT)):
        return _run_main(loop, coro)
    try:
        return loop.run_until_complete(coro), None
    except (Exception, asyncio.CancelledError) as exc:   # noqa: BLE001 - raised by _run
        return None, exc
    except BaseException:
        _escaped(loop)
        raise
    finally:
        _loop_ran = time.monotonic()


_main_ident = [threading.main_thread().ident]


def _run_main(loop: asyncio.AbstractEventLoop, coro: Any) -> tuple[Any, BaseException | None]:
    """``_run_loop`` on the main thread, with a Python-level SIGINT handler (Python's own or
    the program's): while the loop runs (for every caller's calls), Ctrl-C is recorded and
    ends the run, as ``asyncio.Runner`` does, and the handler runs here once the loop is out
    (Python's raises KeyboardInterrupt) (raised inside it, it
    would end whatever callback it hit, another thread's call or a transport's, and may
    leave uvloop marked running for ever).  The interrupted call goes on on the loop, its
    outcome dropped; the other threads' calls go on with the loop's next runner.  The run
    waits on ``gate``, opened by the call's end or by Ctrl-C (``loop.stop()`` would be
    late when the call ends first, and stop the loop's next run)."""
    global _loop_ran
    interrupted: list[int] = []
    program = signal.getsignal(signal.SIGINT)   # Python's, or the program's own: run later
    gate = loop.create_future()

    def open_gate(_: Any = None) -> None:
        if not gate.done():
            gate.set_result(None)

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        loop.call_soon_threadsafe(open_gate)

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:   # (not the main interpreter's main thread after all)
        _main_ident[0] = 0
        return _run_loop(loop, coro)
    future = asyncio.ensure_future(coro, loop=loop)
    future.add_done_callback(open_gate)
    try:
        try:
            loop.run_until_complete(gate)
        except (Exception, asyncio.CancelledError) as exc:   # noqa: BLE001 - raised by _run
            return None, exc
        except BaseException:
            _escaped(loop)
            raise
        finally:
            _loop_ran = time.monotonic()
            if signal.getsignal(signal.SIGINT) is on_sigint:
                signal.signal(signal.SIGINT, program)
        if interrupted:
            if not future.done():   # its outcome goes nowhere: not "never retrieved"
                future.add_done_callback(_retrieved)
            if program is signal.default_int_handler:
                raise KeyboardInterrupt
            program(signal.SIGINT, None)   # the program's handler, here, out of the loop
            if not future.done():   # it did not raise: the call goes on
                return _run_main(loop, future)
        if future.cancelled():
            return None, asyncio.CancelledError()
        error = future.exception()
        return (None, error) if error is not None else (future.result(), None)
    finally:
        del future


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _escaped(loop: asyncio.AbstractEventLoop) -> None:
    """A BaseException got out of the loop on this thread (a signal handler's, raised
    inside it): the loop must still be usable by the others.  One left marked running
    (uvloop, hit while it was starting or stopping) can never run again: a new loop
    replaces it, and the connections on the old one are lost."""
    if loop.is_running() and not loop.is_closed():
        _replace_loop(loop, "the event loop was interrupted (a signal handler raised in it)")


class _Gone:
    """The transport of a connection abandoned with its loop: closing it touches nothing (the
    old loop cannot run; after fork() its sockets and poller are the parent's)."""

    @staticmethod
    def close() -> None:
        pass


def _abandon_connections(reason: str) -> None:
    """Every connection of the drop-in fails from now on with ``reason`` (a libvirtError
    when used), without a byte written or a socket touched."""
    import sniffio

    from ..errors import ConnectionClosed
    error = ConnectionClosed(reason)
    token = sniffio.current_async_library_cvar.set("asyncio")   # (anyio's events made here)
    try:
        for conn in list(_connections):
            rpc = conn._c
            rpc._closed = True
            channels = [rpc._main, *rpc._lanes, *rpc._opening, *rpc._stream_sockets]
            for channel in channels:
                if channel is None or channel.closed is not None:
                    continue
                channel.transport = _Gone()
                channel._on_closed = None
                try:
                    channel.fail(error)
                except Exception:   # noqa: BLE001 - it is dead whatever is left undone
                    channel.closed = error
            for subscription in list(rpc._subscriptions.values()):
                try:
                    subscription.close()
                except Exception:   # noqa: BLE001
                    pass
            conn._events.clear()
            conn._close_watch = None
    finally:
        sniffio.current_async_library_cvar.reset(token)


def _replace_loop(old: asyncio.AbstractEventLoop, reason: str) -> None:
    """``old`` can never run again: the next call makes a new loop (and its thread); the
    calls handed to ``old`` fail with ``reason``, and so do its connections."""
    global _loop, _handed, _hop_scheduled
    with _lock:
        if _loop is not old:
            return
        _loop = None
    error = libvirtError(reason)
    with _hop_mutex:
        queued, _hop_queue[:] = _hop_queue[:], []
        _hop_scheduled = False
    for coro, _ in queued:
        coro.close()
    with _mutex:
        stranded = list(_handed_slots)
        _handed_slots.clear()
        _waiting.clear()
        _handed = 0
        for slot in stranded:
            slot.error, slot.finished = error, True
            if not slot.promoted:
                slot.done.release()
        _cond.notify_all()   # the old background thread sees the new loop and ends
    _abandon_connections(reason)


def _after_fork_in_child() -> None:
    """After fork(), in the child: the parent's loop, its thread and the threads waiting on
    it are gone (and its sockets and poller still the parent's): start afresh.  The
    connections opened before fail with libvirtError, the parent's sockets untouched."""
    global _lock, _mutex, _cond, _hop_mutex, _timer_lock, _local, _loop, _thread, _owner
    global _handed, _released, _loop_ran, _wake_pipe, _hop_scheduled, _queue, _fallback
    _lock = threading.Lock()
    _mutex = threading.Lock()
    _cond = threading.Condition(_mutex)
    _hop_mutex = threading.Lock()
    _timer_lock = threading.Lock()
    _local = threading.local()
    _loop = _thread = _owner = _fallback = None
    _handed = 0
    _released = _loop_ran = 0.0
    _stopping[0] = _reader[0] = False
    _background_ident[0] = 0
    _main_ident[0] = threading.get_ident()   # the child's only thread: its signals' thread
    if _wake_pipe is not None:
        for fd in _wake_pipe:
            try:
                os.close(fd)
            except OSError:
                pass
        _wake_pipe = None
    _pollers.clear()
    _waiting.clear()
    _handed_slots.clear()
    _hop_queue.clear()
    _hop_scheduled = False
    _queue = queue.SimpleQueue()
    _busy.clear()   # (the watches' fds are armed again on the child's loop when next asked)
    try:
        _abandon_connections("the connection was opened before fork(): open a new one in "
                             "the child")
    except Exception:   # noqa: BLE001 - never fail the fork itself
        traceback.print_exc()


def _run_here(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]
              ) -> tuple[Any, BaseException | None]:
    """Run the loop on this thread until ``coro`` is done, then let go of it; its value,
    or its error."""
    try:
        return _run_loop(loop, coro)
    finally:
        _let_go()


# -- a lone caller: libvirt's shape -----------------------------------------------------------
#
# A caller that owns the loop and calls a method that only makes calls steps the method's
# coroutine itself, without running the loop (``aiovirt.client.offloop``): its calls are
# written from here and their replies read from here, as libvirt's own client does, instead
# of a pass of the loop per call (``run_until_complete`` costs 9-36 us of CPU a call, more
# than the rest of the call).  What needs the running loop comes back as ``OnLoop`` and runs
# on it, here.  The loop also takes a pass every ``_IDLE`` seconds of back-to-back calls and
# every ``_SLICE`` of waiting, so its timers and callbacks never starve.

class _NeedsLoop(Exception):
    """A stepped coroutine needed the running loop before it sent anything: run it there."""


async def _tick() -> None:
    """Nothing: running it gives the loop one pass (due timers, ready callbacks)."""


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _settled(future: asyncio.Future[Any]) -> None:
    await asyncio.wait((future,))


def _wait_here(loop: asyncio.AbstractEventLoop, conn: Any, reply: asyncio.Future[Any]) -> None:
    """Wait for ``reply`` (a call's reply slot) by reading the connection's sockets here;
    other replies and events are routed on the way.  A socket only the loop may read (TLS,
    a tunnel) makes the loop run until the reply is in."""
    wake = _wake_pipe[0]   # type: ignore[index]
    while not reply.done():
        if not _reader[0]:   # a call was handed over meanwhile: run the loop from now on
            _run_loop(loop, _settled(reply))
            return
        readers = {}
        for channel in conn.channels:
            fd = channel.fd_here()   # (it sends what is batched: no pass of the loop comes)
            if fd is None:
                _run_loop(loop, _settled(reply))
                return
            readers[fd] = channel
        ready = _poller((*readers, wake)).poll(_SLICE * 1000)
        if not ready:   # a quiet socket: the loop's turn (keepalive decides on it)
            _run_loop(loop, _tick())
        for fd, _ in ready:
            if fd == wake:
                _drain(wake)
            else:
                readers[fd].read_here()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


_pollers: dict[tuple[int, ...], Any] = {}


def _poller(fds: tuple[int, ...]) -> Any:
    """A ``select.poll`` watching ``fds`` for reading, made once per set of descriptors."""
    poller = _pollers.get(fds)
    if poller is None:
        if len(_pollers) > 64:   # sockets come and go: forget the old sets
            _pollers.clear()
        poller = _pollers[fds] = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
    return poller


def _drive(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], conn: Any
           ) -> tuple[Any, BaseException | None]:
    """(Owning the loop, which does not run) step ``coro`` here; its value, or its error
    (``_NeedsLoop`` if it needed the running loop before it sent anything)."""
    state = offloop.local
    value: Any = None
    error: BaseException | None = None
    steps = 0
    try:
        if time.monotonic() - _loop_ran >= _IDLE:   # back-to-back calls: the loop's turn
            _run_loop(loop, _tick())
        while True:
            state.on = True
            try:
                step = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value, None
            except RuntimeError as exc:   # no running loop (asyncio's, sniffio's)
                return None, _NeedsLoop() if steps == 0 else exc
            except (Exception, asyncio.CancelledError) as exc:   # noqa: BLE001 - raised by _run
                return None, exc
            finally:
                state.on = False
            steps += 1
            value = error = None
            if type(step) is OnLoop:
                value, error = _run_loop(loop, _awaited(step.awaitable))
            elif isinstance(step, asyncio.Future):
                _wait_here(loop, conn, step)
            elif step is not None:   # (a bare yield, sleep(0), just goes on)
                error = RuntimeError(f"aiovirt.compat.libvirt: {step!r} awaited without "
                                     "the event loop")
    finally:
        coro.close()
        _let_go()


def _run_handed(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                slot: _Slot) -> tuple[Any, BaseException | None]:
    """Hand ``coro`` to the loop's runner and wait; if made the runner meanwhile, run the
    loop here until the call is done."""
    global _hop_scheduled
    with _hop_mutex:
        _hop_queue.append((coro, slot))
        wake = not _hop_scheduled
        _hop_scheduled = True
    if wake:
        loop.call_soon_threadsafe(_hop_drain)
    try:
        slot.done.acquire()
    except BaseException:
        with _mutex:   # interrupted (KeyboardInterrupt): the loop still owns the call
            if slot in _waiting:
                _waiting.remove(slot)
            runner = slot.promoted and _owner == slot.ident
        _local.slot = None
        if runner:
            _let_go()
        raise
    if slot.promoted:
        with _mutex:
            if not slot.finished:
                slot.fut = loop.create_future()
        try:
            if slot.fut is not None:
                _, error = _run_loop(loop, slot.fut)
                if error is not None:
                    raise error
        except BaseException:
            _local.slot = None   # its call goes on without it: a new slot next time
            raise
        finally:
            _let_go()
    value, error = slot.value, slot.error
    slot.value = slot.error = slot.fut = None
    slot.finished = slot.promoted = False
    return value, error


def _run(coro: Coroutine[Any, Any, Any], conn: Any = None) -> Any:
    """Run ``coro`` on the private loop (here, or on the thread running it) and wait.
    ``conn``: the ``aiovirt`` connection of a method that only makes calls on it: a lone
    caller steps it without the loop (``_drive``)."""
    global _owner, _handed
    loop = _get_loop()
    me = threading.get_ident()
    if _owner == me or me == _background_ident[0]:
        coro.close()
        raise RuntimeError("a blocking aiovirt.compat.libvirt call on its own event-loop "
                           "thread (from a callback run without an event implementation?)")
    # inside the caller's own asyncio code this thread cannot run our loop: hand over
    can_run = asyncio._get_running_loop() is None
    try:
        with _mutex:
            if can_run:
                while _owner == _BACKGROUND and not _handed:
                    loop.call_soon_threadsafe(_stop_background, loop)
                    _cond.wait(1.0)
            mine = can_run and _owner is None
            reads = mine and conn is not None and not _handed
            if mine:
                _owner = me
                _reader[0] = reads
            else:
                # one slot per thread, reused: a thread waits for one call at a time
                slot = getattr(_local, "slot", None)
                if slot is None:
                    slot = _local.slot = _Slot()
                _handed += 1
                _handed_slots.add(slot)
                if can_run:
                    _waiting.append(slot)
                if _owner is None:   # nobody runs the loop and this caller cannot: wake the
                    _cond.notify_all()   # background thread
                elif _reader[0]:   # its owner reads without running it: it is to run it now
                    _reader[0] = False
                    try:
                        os.write(_wake_pipe[1], b"\0")   # type: ignore[index]
                    except BlockingIOError:
                        pass   # (full: a wake-up is pending anyway)
        if reads:
            value, error = _drive(loop, coro, conn)
        elif mine:
            value, error = _run_here(loop, coro)
        else:
            value, error = _run_handed(loop, coro, slot)
    except BaseException:
        if _owner == me:   # interrupted (Ctrl-C) between taking the loop and running it
            _let_go()
        raise
    if error is None:
        _local.last_error = None   # as libvirt's: each call starts by clearing it
        return value
    try:
        raise error
    except libvirtError as exc:
        if exc.err is None:
            # failed in libvirt-python's binding, before libvirt was called: its
            # libvirtError reports the thread's last error, still the previous call's
            exc.err = getattr(_local, "last_error", None)
            if exc.err is not None:
                exc.args = (exc.err[2],)
        _local.last_error = exc.err
        if _error_handler is not None:
            handler, ctx = _error_handler
            handler(ctx, exc.err)
        raise
    finally:
        del error


# -- wrapping ---------------------------------------------------------------------------------

class _Sync:
    """Base of the blocking classes: ``_a`` is the async compat object; ``_owner`` the
    blocking connection an object came from, kept alive by it as libvirt-python's objects
    keep their connection."""

    __slots__ = ("_a", "_owner", "__weakref__")
    _async_class: type = object

    def __init__(self, *args: Any, _obj: Any = None, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} objects come from a connection's methods")

    def __repr__(self) -> str:
        return repr(self._a).replace("aiovirt.compat.", "aiovirt.compat.libvirt.")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Sync) and other._a is self._a

    def __hash__(self) -> int:
        return id(self._a)


_SYNC: dict[type, type[_Sync]] = {}
_connections: weakref.WeakSet[aio.virConnect] = weakref.WeakSet()


def _wrap(value: Any) -> Any:
    """Async compat objects (also inside lists) as their blocking wrappers."""
    cls = _SYNC.get(type(value))
    if cls is not None:
        if isinstance(value, aio.virConnect):
            ref = getattr(value, "_sync", None)
            existing = ref() if ref is not None else None
            if existing is not None:
                return existing
        wrapper = object.__new__(cls)
        wrapper._a = value
        wrapper._owner = None
        if isinstance(value, aio.virConnect):
            # a weak link back: when the last blocking reference goes, the connection closes
            value._sync = weakref.ref(wrapper)   # type: ignore[attr-defined]
            value.dispatch = _dispatch
            _connections.add(value)
        else:
            conn = getattr(value, "_conn", None)
            if isinstance(conn, aio.virConnect):
                wrapper._owner = _wrap(conn)
        return wrapper
    if type(value) is list:
        return [_wrap(item) for item in value]
    if type(value) is tuple:
        return tuple(_wrap(item) for item in value)
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, _Sync):
        return value._a
    if type(value) is list:
        return [_unwrap(item) for item in value]
    return value


def _stepped(make: Callable[[], Coroutine[Any, Any, Any]], target: Any) -> Any:
    """``_run(make())`` for a module function calling on ``target``'s connection
    (``libvirt_qemu``, ``libvirt_lxc``): a lone caller steps it; one whose coroutine needs
    the loop before it sends anything runs it there."""
    try:
        conn = _OBJECT_CONNECTION(target)
    except AttributeError:   # not one of ours: the coroutine says what is wrong
        return _run(make())
    try:
        return _run(make(), conn)
    except _NeedsLoop:
        return _run(make())


def _blocking(name: str, method: Callable[..., Any],
              connection_of: Callable[[Any], Any] | None) -> Callable[..., Any]:
    """The one wrapper factory: a blocking method calling the async one on the loop (or
    stepping it without the loop: ``connection_of`` finds the connection it calls on)."""
    if inspect.iscoroutinefunction(method):
        steps = [connection_of]   # None once the method turned out to need the loop

        def call(self: _Sync, *args: Any, **kwargs: Any) -> Any:
            target = self._a
            args = tuple(map(_unwrap, args))
            if kwargs:
                kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
            conn_of = steps[0]
            try:
                return _wrap(_run(method(target, *args, **kwargs),
                                  None if conn_of is None else conn_of(target)))
            except _NeedsLoop:
                steps[0] = None
                return _wrap(_run(method(target, *args, **kwargs)))
    else:
        def call(self: _Sync, *args: Any, **kwargs: Any) -> Any:
            return _wrap(method(self._a, *map(_unwrap, args), **kwargs))
    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


# methods that live on the event loop (subscriptions and their tasks, closing): never stepped
_ON_LOOP = frozenset((
    "close", "registerCloseCallback", "unregisterCloseCallback", "domainEventRegister",
    "domainEventDeregister", "domainEventRegisterAny", "domainEventDeregisterAny",
    "networkEventRegisterAny", "networkEventDeregisterAny", "storagePoolEventRegisterAny",
    "storagePoolEventDeregisterAny", "nodeDeviceEventRegisterAny",
    "nodeDeviceEventDeregisterAny", "secretEventRegisterAny", "secretEventDeregisterAny"))
_CONNECTION = operator.attrgetter("_c")
_OBJECT_CONNECTION = operator.attrgetter("_conn._c")


def _make_class(name: str, async_cls: type) -> type[_Sync]:
    namespace: dict[str, Any] = {"__slots__": (), "_async_class": async_cls,
                                 "__module__": __name__,
                                 "__doc__": f"libvirt-python's {name} (blocking)."}
    for attr in dir(async_cls):
        if attr.startswith("_") or attr in ("open", "dispatch"):
            continue
        member = inspect.getattr_static(async_cls, attr)
        if isinstance(member, (staticmethod, classmethod)) or not callable(member):
            continue
        stepped = async_cls is not aio.virStream and attr not in _ON_LOOP
        namespace[attr] = _blocking(attr, member, None if not stepped else
                                    _CONNECTION if async_cls is aio.virConnect else
                                    _OBJECT_CONNECTION)
    cls = type(name, (_Sync,), namespace)
    _SYNC[async_cls] = cls
    return cls


virConnect = _make_class("virConnect", aio.virConnect)


def _close_when_dropped(self: _Sync) -> None:
    """libvirt-python closes a connection when its last reference goes (objects made from it
    hold one): so do we, without waiting (this may run on any thread, the loop's included)."""
    conn = self._a
    loop = _loop
    if loop is None or loop.is_closed() or not conn._c.is_alive:
        return
    try:
        asyncio.run_coroutine_threadsafe(conn.close(), loop)
    except RuntimeError:
        pass   # the loop is shutting down with the interpreter


virConnect.__del__ = _close_when_dropped  # type: ignore[attr-defined]
virDomain = _make_class("virDomain", aio.virDomain)
virNetwork = _make_class("virNetwork", aio.virNetwork)
virNetworkPort = _make_class("virNetworkPort", aio.virNetworkPort)
virInterface = _make_class("virInterface", aio.virInterface)
virStoragePool = _make_class("virStoragePool", aio.virStoragePool)
virStorageVol = _make_class("virStorageVol", aio.virStorageVol)
virNodeDevice = _make_class("virNodeDevice", aio.virNodeDevice)
virSecret = _make_class("virSecret", aio.virSecret)
virNWFilter = _make_class("virNWFilter", aio.virNWFilter)
virNWFilterBinding = _make_class("virNWFilterBinding", aio.virNWFilterBinding)
virDomainSnapshot = _make_class("virDomainSnapshot", aio.virDomainSnapshot)
virDomainCheckpoint = _make_class("virDomainCheckpoint", aio.virDomainCheckpoint)
virStream = _make_class("virStream", aio.virStream)


def _recv_all(self: _Sync, handler: Callable[..., Any], opaque: Any) -> None:
    """libvirt-python's ``recvAll``: blocking ``recv`` calls on the caller's thread, the
    handler given this stream, here (a slow handler holds nobody else up); a negative int
    from it fails (None is fine); the stream aborted if the handler fails; not finished."""
    while True:
        data = self.recv(aio._STREAM_BUF_SIZE)  # type: ignore[attr-defined]
        if len(data) == 0:
            break
        try:
            ret = handler(self, data, opaque)
            if isinstance(ret, int) and ret < 0:
                raise RuntimeError(f"recvAll handler returned {ret}")
        except BaseException:
            try:
                self.abort()  # type: ignore[attr-defined]
            except Exception:   # noqa: BLE001 - the handler's error is the one raised
                pass
            raise


def _send_all(self: _Sync, handler: Callable[..., Any], opaque: Any) -> None:
    """libvirt-python's ``sendAll``: blocking ``send`` calls of what the handler returns
    (given this stream, on the caller's thread) until it returns nothing; the stream
    aborted if the handler fails; not finished."""
    while True:
        try:
            data = handler(self, aio._STREAM_BUF_SIZE, opaque)
        except BaseException:
            try:
                self.abort()  # type: ignore[attr-defined]
            except Exception:   # noqa: BLE001 - the handler's error is the one raised
                pass
            raise
        if not data:
            break
        self.send(data)  # type: ignore[attr-defined]


def _sparse_recv_all(self: _Sync, handler: Callable[..., Any], holeHandler: Callable[..., Any],  # noqa: N803
                     opaque: Any) -> None:
    """libvirt-python's ``sparseRecvAll``, on the caller's thread as ``recvAll``: data to
    ``handler``, holes to ``holeHandler``; a negative int from either aborts the stream."""
    while True:
        got = self.recvFlags(aio._STREAM_BUF_SIZE,  # type: ignore[attr-defined]
                             VIR_STREAM_RECV_STOP_AT_HOLE)  # noqa: F405
        if got == -3:
            length = self.recvHole()  # type: ignore[attr-defined]
            ret = holeHandler(self, length, opaque)
            if isinstance(ret, int) and ret < 0:
                self.abort()  # type: ignore[attr-defined]
                raise RuntimeError(f"holeHandler handler returned {ret}")
            continue
        if not got:
            break
        ret = handler(self, got, opaque)
        if isinstance(ret, int) and ret < 0:
            self.abort()  # type: ignore[attr-defined]
            raise RuntimeError(f"sparseRecvAll handler returned {ret}")


def _sparse_send_all(self: _Sync, handler: Callable[..., Any], holeHandler: Callable[..., Any],  # noqa: N803
                     skipHandler: Callable[..., Any], opaque: Any) -> None:  # noqa: N803
    """libvirt-python's ``sparseSendAll``, on the caller's thread: ``holeHandler`` says
    [in data?, section length], holes are sent and skipped (``skipHandler``), data comes
    from ``handler`` until it returns nothing."""
    while True:
        in_data, section = holeHandler(self, opaque)
        if not in_data and section > 0:
            if (self.sendHole(section) < 0  # type: ignore[attr-defined]
                    or skipHandler(self, section, opaque) < 0):
                self.abort()  # type: ignore[attr-defined]
            continue
        got = handler(self, min(aio._STREAM_BUF_SIZE, section), opaque)  # type: ignore[attr-defined]
        if isinstance(got, int) and got < 0:
            self.abort()  # type: ignore[attr-defined]
            raise RuntimeError(f"sparseSendAll handler returned {got}")
        if not got:
            break
        self.send(got)  # type: ignore[attr-defined]


_recv_all.__name__ = _recv_all.__qualname__ = "recvAll"
_send_all.__name__ = _send_all.__qualname__ = "sendAll"
_sparse_recv_all.__name__ = _sparse_recv_all.__qualname__ = "sparseRecvAll"
_sparse_send_all.__name__ = _sparse_send_all.__qualname__ = "sparseSendAll"
virStream.recvAll = _recv_all  # type: ignore[attr-defined]
virStream.sendAll = _send_all  # type: ignore[attr-defined]
virStream.sparseRecvAll = _sparse_recv_all  # type: ignore[attr-defined]
virStream.sparseSendAll = _sparse_send_all  # type: ignore[attr-defined]
assert set(_SYNC) == set(COMPAT_CLASSES.values())


# -- module functions -------------------------------------------------------------------------

def open(name: str | None = None) -> virConnect:  # noqa: A001
    return _wrap(_run(aio.open(name)))  # type: ignore[no-any-return]


def openReadOnly(name: str | None = None) -> virConnect:  # noqa: N802
    return _wrap(_run(aio.openReadOnly(name)))  # type: ignore[no-any-return]


def openAuth(uri: str | None, auth: Any, flags: int = 0) -> virConnect:  # noqa: N802
    # the callback runs in a thread of its own: it may wait for a user, or call libvirt,
    # while the loop serves every other connection
    return _wrap(_run(aio.openAuth(uri, auth, flags, _in_thread=True)))  # type: ignore[no-any-return]


def getVersion(name: str | None = None) -> int:  # noqa: N802
    """The client library's version (libvirt's whose API this layer follows)."""
    return _LIBVIR_VERSION_NUMBER


_error_handler: tuple[Callable[[Any, Any], Any], Any] | None = None


def registerErrorHandler(f: Callable[[Any, Any], Any] | None, ctx: Any) -> int:  # noqa: N802
    """Call ``f(ctx, err)`` for every error (``None`` restores the default)."""
    global _error_handler
    _error_handler = None if f is None else (f, ctx)
    return 1


def virGetLastError() -> Any:  # noqa: N802
    return getattr(_local, "last_error", None)


def virGetLastErrorCode() -> int:  # noqa: N802
    err = virGetLastError()
    return 0 if err is None else err[0]


def virGetLastErrorDomain() -> int:  # noqa: N802
    err = virGetLastError()
    return 0 if err is None else err[1]


def virGetLastErrorMessage() -> str:  # noqa: N802
    err = virGetLastError()
    return "no error" if err is None else err[2]


def virResetLastError() -> None:  # noqa: N802
    _local.last_error = None


def virInitialize() -> int:  # noqa: N802
    return 0


# -- events -----------------------------------------------------------------------------------

_queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...],
                                Callable[[], None] | None]] = queue.SimpleQueue()
_default_impl = False
_aio_impl: Any = None            # set by aiovirt.compat.libvirtaio
_fallback: threading.Thread | None = None
_ids = itertools.count(1)
_timers: dict[int, list[Any]] = {}   # id -> [interval ms, cb, opaque, next due]
_handles: dict[int, list[Any]] = {}  # id -> [fd, events, cb, opaque]
_timer_lock = threading.Lock()


def _wake() -> None:
    """A no-op queued to make a waiting virEventRunDefaultImpl look at its timers again."""


def _dispatch(callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Called on the private loop for every event: hand it to where callbacks run."""
    args = _wrap(tuple(args))
    if _aio_impl is not None:
        _aio_impl._deliver(callback, args)
        return
    if not _default_impl:
        _start_fallback()
    _queue.put((callback, args, None))


def _start_fallback() -> None:
    global _fallback
    with _lock:
        if _fallback is None or not _fallback.is_alive():
            def run() -> None:
                while not _default_impl:
                    virEventRunDefaultImpl()
            _fallback = threading.Thread(target=run, name="aiovirt-compat-events",
                                         daemon=True)
            _fallback.start()


def _invoke(callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        callback(*args)
    except Exception:   # libvirt-python prints and carries on
        traceback.print_exc()


def virEventRegisterDefaultImpl() -> int:  # noqa: N802
    global _default_impl
    _default_impl = True
    _get_loop()
    return 0


def virEventRegisterImpl(addHandle: Any, updateHandle: Any, removeHandle: Any,  # noqa: N802,N803
                         addTimeout: Any, updateTimeout: Any, removeTimeout: Any) -> None:  # noqa: N803
    """Accepted for compatibility: aiovirt needs no event implementation of the caller's;
    ``aiovirt.compat.libvirtaio`` is the asyncio one."""


def _due_timers(now: float) -> list[tuple[int, list[Any]]]:
    with _timer_lock:
        return [(tid, t) for tid, t in _timers.items() if t[0] >= 0 and t[3] <= now]


def virEventRunDefaultImpl() -> int:  # noqa: N802
    """One iteration: wait until an event, timer or watch is due, run what is, return 0."""
    while True:
        with _timer_lock:
            dues = [t[3] for t in _timers.values() if t[0] >= 0]
        wait = None if not dues else max(0.0, min(dues) - time.monotonic())
        try:
            item = _queue.get(timeout=wait) if wait is None or wait > 0 else _queue.get_nowait()
        except queue.Empty:
            item = None
        ran = False
        while item is not None:
            callback, args, after = item
            if callback is not _wake:
                _invoke(callback, args)
                ran = True
            if after is not None:
                after()
            try:
                item = _queue.get_nowait()
            except queue.Empty:
                item = None
        now = time.monotonic()
        for tid, timer in _due_timers(now):
            timer[3] = now + timer[0] / 1000.0
            _invoke(timer[1], (tid, timer[2]))
            ran = True
        if ran:
            return 0


def virEventAddTimeout(timeout: int, cb: Callable[..., Any], opaque: Any) -> int:  # noqa: N802
    """``cb(timer, opaque)`` every ``timeout`` ms (0: every iteration, -1: disabled)."""
    tid = next(_ids)
    with _timer_lock:
        _timers[tid] = [timeout, cb, opaque, time.monotonic() + max(timeout, 0) / 1000.0]
    _queue.put((_wake, (), None))   # wake the loop to take the new timer into account
    return tid


def virEventUpdateTimeout(timer: int, timeout: int) -> None:  # noqa: N802
    with _timer_lock:
        if timer in _timers:
            _timers[timer][0] = timeout
            _timers[timer][3] = time.monotonic() + max(timeout, 0) / 1000.0
    _queue.put((_wake, (), None))


def virEventRemoveTimeout(timer: int) -> int:  # noqa: N802
    with _timer_lock:
        return 0 if _timers.pop(timer, None) is not None else -1


_busy: set[int] = set()   # (loop) watches whose callback is queued: not armed till it ran


def _sync_fd(fd: int) -> None:
    """(On the private loop) arm ``fd``'s reader and writer for what its watches ask, a
    watch whose callback waits to run not counted (libvirt's loop polls every fd with the
    union of its watches' events, and calls each watch whose events came)."""
    loop = _get_loop()
    read = write = False
    for hid, entry in list(_handles.items()):
        if entry[0] == fd and hid not in _busy:
            read = read or bool(entry[1] & VIR_EVENT_HANDLE_READABLE)  # noqa: F405
            write = write or bool(entry[1] & VIR_EVENT_HANDLE_WRITABLE)  # noqa: F405
    if read:
        loop.add_reader(fd, _fire, fd, VIR_EVENT_HANDLE_READABLE)  # noqa: F405
    else:
        loop.remove_reader(fd)
    if write:
        loop.add_writer(fd, _fire, fd, VIR_EVENT_HANDLE_WRITABLE)  # noqa: F405
    else:
        loop.remove_writer(fd)


def _fire(fd: int, kind: int) -> None:
    """(On the private loop) ``fd`` became readable or writable: queue the callback of every
    watch on it that asks for ``kind``; each is armed again once its callback has run."""
    loop = _get_loop()
    for hid, entry in list(_handles.items()):
        if entry[0] == fd and entry[1] & kind and hid not in _busy:
            _busy.add(hid)
            _queue.put((_handle_callback, (hid, fd, kind),
                        functools.partial(loop.call_soon_threadsafe, _rearm, hid, fd)))
    _sync_fd(fd)


def _handle_callback(hid: int, fd: int, kind: int) -> None:
    """(On the thread running virEventRunDefaultImpl) call watch ``hid``'s callback, unless
    it was removed meanwhile (libvirt calls no removed watch)."""
    entry = _handles.get(hid)
    if entry is not None:
        entry[2](hid, fd, kind, entry[3])


def _rearm(hid: int, fd: int) -> None:
    _busy.discard(hid)
    _sync_fd(fd)


def virEventAddHandle(fd: int, events: int, cb: Callable[..., Any], opaque: Any) -> int:  # noqa: N802
    """``cb(watch, fd, events, opaque)`` when ``fd`` is readable/writable."""
    hid = next(_ids)
    _handles[hid] = [fd, events, cb, opaque]
    _get_loop().call_soon_threadsafe(_sync_fd, fd)
    return hid


def virEventUpdateHandle(watch: int, events: int) -> None:  # noqa: N802
    entry = _handles.get(watch)
    if entry is not None:
        entry[1] = events
        _get_loop().call_soon_threadsafe(_sync_fd, entry[0])


def virEventRemoveHandle(watch: int) -> int:  # noqa: N802
    entry = _handles.pop(watch, None)
    if entry is None:
        return -1
    _get_loop().call_soon_threadsafe(_sync_fd, entry[0])
    return 0


def virEventInvokeFreeCallback(opaque: Any) -> None:  # noqa: N802
    """libvirt-python's helper for custom event loops: nothing to free here."""


os.register_at_fork(after_in_child=_after_fork_in_child)


class _LibvirtMod:
    """``libvirt.libvirtmod``: what code reaching into the C module uses."""

    virEventRegisterImpl = staticmethod(virEventRegisterImpl)
    virGetLastError = staticmethod(virGetLastError)


libvirtmod = _LibvirtMod()
