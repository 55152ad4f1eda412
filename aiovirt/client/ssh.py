"""Tunnelled transports: ``driver+ssh://`` (also ``libssh`` and ``libssh2``) and ``driver+ext://``.

Both run a child process whose stdin and stdout are one end of a ``socketpair`` and speak to
the daemon through it, as libvirt does (virnetsocket.c, virNetSocketNewConnectCommand).  For
SSH the child is the user's own ``ssh``, so ``~/.ssh/config``, agents and ProxyJump apply; on
the far side it runs ``virt-ssh-helper`` or ``nc -U SOCKET`` (``ssh_command`` builds the line
exactly as libvirt 9.0 does).  For ``ext`` it is ``command=`` itself (one program, no
arguments, no shell: libvirt execs it the same way).

ssh's stderr goes to a pipe that a thread of ours reads as it comes, keeping its last 4 KiB
(the child never blocks on it, and what the far side says takes no more room);
when the tunnel ends that tail is the error's message.  A tunnel that ends before the daemon
sent a byte never came up: callers get ``ConnectionFailed`` carrying ssh's words ("Host key
verification failed.", "Permission denied (publickey).", "nc: not found").  Later, a loss is
the channel's usual ``ConnectionClosed``, ssh's words included, and how the child ended ("it
was killed by SIGKILL": a silent child's end is not the daemon closing the connection).  The
child is terminated and reaped when the transport closes, bounded: SIGTERM, one second's
grace, then SIGKILL.

libssh-only parameters map to OpenSSH options (libvirt itself ignores them for ``+ssh``; we
honour them on all three transports, since all three run OpenSSH here):
``known_hosts=FILE`` → ``UserKnownHostsFile=FILE``; ``known_hosts_verify=normal|auto|ignore``
→ ``StrictHostKeyChecking=yes|accept-new|no`` (libssh's "normal" asks through the auth
callback; OpenSSH cannot ask us, so unknown hosts fail); ``sshauth=`` (libssh's agent, privkey,
password, keyboard-interactive) → ``PreferredAuthentications`` (agent and privkey are both
OpenSSH's publickey).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import atexit
import subprocess
import threading
from collections.abc import Callable

import anyio

from ..errors import ConnectionFailed, InvalidURI
from .backend import asyncio_loop
from .dialers import dial_socket
from .transport import NoFdPassing, Sink, Spawn, Transport
from .uri import ConnectionURI

__all__ = ["CommandTransport", "dial_ext", "dial_ssh", "remote_command", "shell_quote",
           "ssh_command"]

PROXIES = ("auto", "netcat", "native")
_SHELL_SPECIAL = set("\r\t\n !\"#$&'()*;<>?[\\]^`{|}~")
_KNOWN_HOSTS_VERIFY = {"normal": "yes", "auto": "accept-new", "ignore": "no"}
_SSHAUTH = {"agent": "publickey", "privkey": "publickey", "password": "password",
            "keyboard-interactive": "keyboard-interactive"}
_GRACE = 1.0          # seconds a terminated child has to exit before SIGKILL
_STDERR_TAIL = 4096   # bytes of the child's stderr quoted in errors


# -- the command line (pure) ---------------------------------------------------------------------
def shell_quote(text: str) -> str:
    """Quote ``text`` for /bin/sh only if it needs it, the way libvirt's
    virBufferEscapeShell does (its lines must come out byte for byte the same)."""
    if not text:
        return "''"
    if not _SHELL_SPECIAL.intersection(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def _quote_twice(text: str) -> str:
    """sshd hands the command to a shell, which runs ``sh -c``: two levels of quoting."""
    return shell_quote(shell_quote(text))


def remote_command(proxy: str, netcat: str | None, socket_path: str, driver_uri: str,
                   readonly: bool = False) -> str:
    """The command ssh runs on the far side (libvirt's virNetClientSSHHelperCommand):
    ``virt-ssh-helper`` (native), ``nc -U SOCKET`` (netcat), or the first if installed and the
    second otherwise (auto)."""
    if proxy not in PROXIES:
        raise InvalidURI(f"proxy={proxy!r} is not one of {', '.join(PROXIES)}")
    if proxy == "auto" and netcat is not None:
        proxy = "netcat"        # a netcat= binary means the user wants the nc proxy
    nc = _quote_twice(netcat or "nc")
    nccmd = (f"if '{nc}' -q 2>&1 | grep \"requires an argument\" >/dev/null 2>&1; then "
             "ARG=-q0;else ARG=;fi;"
             f"'{nc}' $ARG -U {socket_path}")     # libvirt does not quote the socket path
    helper = f"virt-ssh-helper{' -r ' if readonly else ' '}'{_quote_twice(driver_uri)}'"
    if proxy == "auto":
        return (f"sh -c 'which virt-ssh-helper 1>/dev/null 2>&1; if test $? = 0; then "
                f"    {helper}; else    {nccmd}; fi'")
    if proxy == "netcat":
        return f"sh -c '{nccmd}'"
    if netcat is not None:
        raise InvalidURI("netcat= cannot be used with proxy=native")
    return f"sh -c '{helper}'"


def _default_proxy(uri: ConnectionURI) -> str:
    """libvirt's choice without proxy=: netcat for an explicit socket, native for a session
    daemon (a URI ending /session, or test+..., when we are not root), auto otherwise."""
    if "socket" in uri.params:
        return "netcat"
    if _user_daemon(uri):
        return "native"
    return "auto"


def _user_daemon(uri: ConnectionURI) -> bool:
    return (uri.path == "/session" or uri.driver == "test") and os.geteuid() != 0


def _remote_socket(uri: ConnectionURI, readonly: bool) -> str:
    """The daemon's socket on the far side: ``socket=``, else libvirtd's (libvirt cannot
    probe the far side, so it always picks the legacy libvirtd socket; virt-ssh-helper
    probes there)."""
    if "socket" in uri.params:
        return uri.params["socket"]
    mode = uri.params.get("mode", "auto")
    if mode == "direct":
        raise InvalidURI(f"mode=direct cannot be used with the {uri.transport} transport")
    if mode not in ("auto", "legacy"):
        raise InvalidURI(f"mode={mode!r} is not one of auto, legacy, direct")
    if _user_daemon(uri):   # as libvirt does: our runtime directory, not the far side's
        runtime = os.environ.get("XDG_RUNTIME_DIR") or os.path.expanduser("~/.cache")
        return os.path.join(runtime, "libvirt", "libvirt-sock")
    return "/var/run/libvirt/libvirt-sock" + ("-ro" if readonly else "")


def ssh_command(uri: ConnectionURI, readonly: bool = False) -> list[str]:
    """The argv that reaches the daemon of ``uri`` through the system ssh: libvirt's own
    (virNetSocketNewConnectSSH) followed by the libssh parameters' OpenSSH equivalents."""
    params = uri.params
    argv = [params.get("command") or "ssh"]
    if uri.port is not None:
        argv += ["-p", str(uri.port)]
    if uri.user:
        argv += ["-l", uri.user]
    if params.get("keyfile"):
        argv += ["-i", params["keyfile"]]
    argv += ["-T", "-e", "none"]
    if uri.flag("no_tty"):
        argv += ["-o", "BatchMode=yes"]
    if uri.flag("no_verify"):
        argv += ["-o", "StrictHostKeyChecking=no"]
    elif "known_hosts_verify" in params:
        verify = params["known_hosts_verify"].lower()
        if verify not in _KNOWN_HOSTS_VERIFY:
            raise InvalidURI(f"known_hosts_verify={verify!r} is not one of "
                             f"{', '.join(_KNOWN_HOSTS_VERIFY)}")
        argv += ["-o", f"StrictHostKeyChecking={_KNOWN_HOSTS_VERIFY[verify]}"]
    if params.get("known_hosts"):
        argv += ["-o", f"UserKnownHostsFile={params['known_hosts']}"]
    if params.get("sshauth"):
        methods: list[str] = []
        for method in params["sshauth"].lower().split(","):
            if method not in _SSHAUTH:
                raise InvalidURI(f"sshauth: {method!r} is not one of {', '.join(_SSHAUTH)}")
            if _SSHAUTH[method] not in methods:
                methods.append(_SSHAUTH[method])
        argv += ["-o", f"PreferredAuthentications={','.join(methods)}"]
    proxy = params.get("proxy") or _default_proxy(uri)
    argv += ["--", uri.host or "localhost",
             remote_command(proxy, params.get("netcat"), _remote_socket(uri, readonly),
                            uri.remote_name, readonly)]
    return argv


# -- the transport ------------------------------------------------------------------------------
class CommandTransport(NoFdPassing):
    """A transport over a child's stdio: the socket's own transport, plus the child, which it
    terminates and reaps on close, and whose stderr explains a tunnel that ends."""

    def __init__(self, inner: Transport, process: subprocess.Popen[bytes], stderr: StderrTail,
                 what: str, spawn: Spawn) -> None:
        self._inner = inner
        self.process = process
        self._stderr = stderr
        self._what = what                # "ssh to HOST" / "command PATH"
        self._spawn = spawn
        self._sink: Sink | None = None
        self._answered = False           # a byte came from the daemon: the tunnel is up
        self._closing = False

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def stderr_text(self) -> str:
        """The tail of what the child wrote to stderr, stripped."""
        return self._stderr.text(ended=self.process.poll() is not None)

    # Sink: between the socket and the channel
    def feed(self, data: bytes) -> None:
        assert self._sink is not None
        if not self._answered:
            self._answered = True
            if _looks_like_text(data):   # a login banner or a shell's words, not the daemon
                self._sink.fail(ConnectionFailed(
                    f"{self._what}: the far side printed {data[:120].decode(errors='replace')!r}"
                    " instead of speaking libvirt's protocol (a login script or banner that "
                    "writes to stdout?)" + (f"; its stderr: {said}"
                                            if (said := self.stderr_text()) else "")))
                return
        self._sink.feed(data)

    def lost(self, exc: BaseException | None) -> None:
        # The socket ended.  Until the child exits its stderr may be incomplete (ssh can close
        # its stdout before relaying the far side's last words): wait for that, bounded.
        self._when(lambda: self._closing or self.process.poll() is not None,
                   lambda: self._report(exc))

    def _when(self, done: Callable[[], bool], then: Callable[[], None]) -> None:
        """Call ``then`` once ``done()`` or after ``_GRACE`` seconds, without blocking: polled
        from the asyncio loop (we may be in one of its callbacks, where no task can start), or
        in a task of the connection's under other backends (there a task calls us)."""
        if done():
            then()
            return
        loop = asyncio_loop()
        if loop is not None:
            deadline = loop.time() + _GRACE

            def poll() -> None:
                if done() or loop.time() >= deadline:
                    then()
                else:
                    loop.call_later(0.005, poll)

            loop.call_later(0.005, poll)
            return

        async def wait() -> None:
            with anyio.move_on_after(_GRACE):
                while not done():
                    await anyio.sleep(0.005)
            then()

        try:
            self._spawn(wait, "aiovirt tunnel ended")
        except Exception:  # noqa: BLE001 - no task can start: report what we have
            then()

    def _report(self, exc: BaseException | None) -> None:
        sink = self._sink
        assert sink is not None
        if self._closing:
            sink.lost(exc)
            return
        said = self.stderr_text()
        ended = _how_it_ended(self.process.poll())
        if not self._answered:
            # never came up: to the caller that is a failure to connect.  The channel's fail
            # hands our error to every caller as is (lost would rewrap it as ConnectionClosed).
            detail = said or ended or (f"{exc}" if exc is not None else
                                       "it closed the connection")
            sink.fail(ConnectionFailed(f"{self._what} failed: {detail}"))
        elif said:
            sink.lost(ConnectionError(f"{self._what}: {said}"
                                      + (f" ({ended})" if ended else "")))
        elif ended and (exc is not None or self.process.returncode != 0):
            # silent, e.g. killed: the loss is the child's end, not the daemon's doing (a
            # clean end of the stream and ssh's status 0 are the daemon closing: lost(None))
            sink.lost(ConnectionError(f"{self._what}: {ended}"
                                      + (f" ({exc})" if exc is not None else "")))
        else:
            sink.lost(exc)

    # Transport
    def attach(self, sink: Sink) -> None:
        self._sink = sink
        self._inner.attach(self)

    def write(self, data: bytes, alone: bool = False) -> None:
        self._inner.write(data, alone)

    def write_parts(self, header: bytes, payload: memoryview) -> None:
        self._inner.write_parts(header, payload)

    def pause_reading(self) -> bool:
        return self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    async def drain(self) -> None:
        await self._inner.drain()

    def backed_up(self) -> bool:
        return getattr(self._inner, "backed_up", lambda: False)()

    @property
    def fd_passing(self) -> str | None:
        return f"file descriptors cannot pass through a tunnel ({self._what})"

    @property
    def raw_socket(self) -> None:
        return None   # our end of a socketpair: the daemon is beyond the command

    def close(self) -> None:
        """Close the socket, terminate the child and reap it.  A thread of its own does the
        reaping: it must happen even when the loop stops or our tasks are cancelled."""
        self._inner.close()
        if self._closing:
            return
        self._closing = True
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
        threading.Thread(target=_kill, args=(self.process, _GRACE),
                         name=f"aiovirt reap {self.process.pid}", daemon=True).start()


def _looks_like_text(data: bytes) -> bool:
    """Whether the first bytes from a tunnel are text rather than a packet's length word
    (which would claim more than a message may hold: its first byte is at most 2)."""
    head = data[:4]
    return len(head) == 4 and head[0] > 2 and all(32 <= b < 127 or b in (9, 10, 13)
                                                  for b in head)


def _how_it_ended(status: int | None) -> str | None:
    """A child's end in words (``Popen.returncode``); None while it runs."""
    if status is None:
        return None
    if status < 0:
        try:
            return f"it was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"it was killed by signal {-status}"
    return f"it exited with status {status}"


class StderrTail:
    """The last ``_STDERR_TAIL`` bytes a child writes to stderr (a pipe), read by a thread
    of its own: a file would grow with whatever the far side sends for as long as the
    tunnel lives.  The thread ends when every writer has closed the pipe."""

    def __init__(self) -> None:
        reader, self.writer = os.pipe()
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(reader,), daemon=True,
                                        name="aiovirt tunnel stderr")
        self._thread.start()

    def _read(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 65536):
                with self._lock:
                    self._tail += chunk
                    del self._tail[:-_STDERR_TAIL]
        except OSError:
            pass
        finally:
            os.close(fd)

    def started(self) -> None:
        """The child has its copy of the pipe: ours is closed, so the end is seen."""
        if self.writer >= 0:
            os.close(self.writer)
            self.writer = -1

    def text(self, ended: bool = False) -> str:
        """The tail, stripped; ``ended``: the child is gone, so wait (briefly) for the
        reader to take its last words."""
        if ended:
            self._thread.join(0.5)
        with self._lock:
            return self._tail.decode(errors="replace").strip()


# children not reaped yet: killed at exit (a reaper thread is a daemon thread, so a child that
# outlives SIGTERM would outlive the program too)
_children: set[subprocess.Popen[bytes]] = set()
_children_lock = threading.Lock()


@atexit.register
def _kill_children() -> None:
    with _children_lock:
        left = list(_children)
    for process in left:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(1)


def _kill(process: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    """Give ``process`` ``grace`` seconds to exit, then SIGKILL it; reap it (bounded)."""
    if grace:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(2)
    if process.poll() is not None:
        with _children_lock:
            _children.discard(process)


async def _dial_command(argv: list[str], what: str, spawn: Spawn, native: bool
                        ) -> CommandTransport:
    """Run ``argv`` with one end of a socketpair as its stdin and stdout; a transport over
    the other end."""
    ours, theirs = socket.socketpair()
    stderr = StderrTail()
    try:
        process = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=theirs.fileno(),
                                   stderr=stderr.writer, close_fds=True)
        with _children_lock:
            _children.add(process)
    except BaseException as exc:
        ours.close()
        if isinstance(exc, OSError | ValueError):
            raise ConnectionFailed(f"{what}: cannot run {argv[0]!r}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from exc
        raise
    finally:
        theirs.close()
        stderr.started()
    try:
        inner = await dial_socket(ours, spawn, native)
    except BaseException as exc:
        ours.close()
        _kill(process)
        if isinstance(exc, OSError):
            raise ConnectionFailed(f"{what}: {exc.strerror or exc}") from exc
        raise
    return CommandTransport(inner, process, stderr, what, spawn)


async def dial_ssh(uri: ConnectionURI, spawn: Spawn, native: bool) -> Transport:
    """Through the system ssh to ``uri``'s host, then virt-ssh-helper or nc to the daemon."""
    argv = ssh_command(uri, readonly=uri.readonly)
    return await _dial_command(argv, f"{os.path.basename(argv[0])} to "
                               f"{uri.host or 'localhost'}", spawn, native)


async def dial_ext(uri: ConnectionURI, spawn: Spawn, native: bool) -> Transport:
    """``command=``, run here; its stdin and stdout are the connection."""
    command = uri.params.get("command")
    if not command:
        raise InvalidURI(f"{uri.uri!r}: the ext transport needs command=")
    return await _dial_command([command], f"command {command!r}", spawn, native)
