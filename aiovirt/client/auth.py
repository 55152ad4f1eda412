"""Authenticating a socket: what ``AUTH_LIST`` offers decides what the client does.

``authenticate`` runs between ``AUTH_LIST`` and the rest of the handshake on every socket of a
connection (the main one, each lane, each reconnection).  As in libvirt's remote driver, the
URI's ``?auth=sasl|sasl.MECH|polkit`` picks the type, else the server's first one.  ``none``
needs nothing; ``polkit`` is one call (the daemon asks polkit about our UNIX credentials);
SASL runs a mechanism of ``sasl`` (GSSAPI > SCRAM-SHA-256 > SCRAM-SHA-1 > PLAIN, the last
over TLS only) with credentials from ``Credentials``.  GSSAPI (with ``aiovirt[gssapi]``) is
preferred unless ``auth=`` gives a (user, password) pair and the server offers a password
mechanism too; it takes the Kerberos credential cache, or that pair as principal and password.
"""

from __future__ import annotations

import enum
import inspect

import anyio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from ..errors import AuthenticationError, LibvirtError
from ..protocol import remote
from .config import AuthConf, ConfSyntaxError, find_auth_conf
from .sasl import IMPLEMENTED, Gssapi, Mechanism, SaslError, choose_mechanism, \
    gssapi_available, make_mechanism, parse_mechlist

if TYPE_CHECKING:
    from .channel import Channel
    from .uri import ConnectionURI

__all__ = ["AUTH_NONE", "AUTH_POLKIT", "AUTH_SASL", "AuthCallback", "Credential",
           "CredentialType", "Credentials", "authenticate"]

AUTH_NONE, AUTH_SASL, AUTH_POLKIT = 0, 1, 2
_NAMES = {AUTH_NONE: "none", AUTH_SASL: "sasl", AUTH_POLKIT: "polkit"}
_P = remote.PROCEDURES
_MAX_STEPS = 8          # SCRAM needs 2, PLAIN 1, GSSAPI 3: a server wanting more is broken
_INSECURE = ("tcp", "ext")   # transports libvirt does not count as secure (is_secure = 0)
_SERVICE = "libvirt"    # the SASL service name, and auth.conf's [auth-libvirt-HOST]


class CredentialType(enum.IntEnum):
    """libvirt's ``virConnectCredentialType`` (``VIR_CRED_*``)."""

    USERNAME = 1        # identity to act as
    AUTHNAME = 2        # identity to authenticate as (what SASL asks for)
    LANGUAGE = 3
    CNONCE = 4
    PASSPHRASE = 5
    ECHOPROMPT = 6
    NOECHOPROMPT = 7
    REALM = 8
    EXTERNAL = 9


@dataclass
class Credential:
    """One thing the authentication needs, as libvirt's ``virConnectCredential``: the
    callback reads ``type``, ``prompt`` and ``default`` and sets ``result`` (left None, the
    default is used)."""

    type: CredentialType
    prompt: str
    default: str | None = None
    challenge: str | None = None
    result: str | None = None


AuthCallback: TypeAlias = Callable[[list[Credential]], "Awaitable[None] | None"]


def _check_text(what: str, value: object, error: type[Exception]) -> None:
    """A user name or password must be a str SASL can send as UTF-8."""
    if not isinstance(value, str):
        raise error(f"{what} must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise (ValueError if error is TypeError else error)(
            f"{what} is not valid text (a lone surrogate)") from None


class Credentials:
    """Where a connection's user name and password come from (what ``connect(auth=)`` is
    turned into): a ``(user, password)`` tuple, a callback (sync or async) filling a list of
    ``Credential``, or None.  Without a tuple, auth.conf is read first and the callback asked
    only for what it lacks; the user name defaults to the URI's.  Once accepted, the pair is
    remembered, so lanes and reconnections never ask again; a refusal forgets it."""

    def __init__(self, auth: tuple[str | None, str] | AuthCallback | None = None) -> None:
        if auth is not None and not callable(auth) and not (
                isinstance(auth, tuple) and len(auth) == 2):
            raise TypeError("auth must be (user, password), a callback taking a list of "
                            f"Credential, or None; got {type(auth).__name__}")
        if isinstance(auth, tuple):
            user, password = auth
            if user is not None:
                _check_text("auth=(user, ...): the user name", user, TypeError)
            _check_text("auth=(..., password): the password", password, TypeError)
        self.auth = auth
        self._accepted: tuple[str, str] | None = None

    async def get(self, uri: ConnectionURI, mechanism: str) -> tuple[str, str]:
        """The ``(user, password)`` to try on ``uri``; ``AuthenticationError`` says what is
        missing and where it looked."""
        if self._accepted is not None:
            return self._accepted
        auth = self.auth
        if isinstance(auth, tuple):
            user = auth[0] or uri.user
            if not user:
                raise AuthenticationError(f"SASL {mechanism} on {uri.uri}: auth= gives no "
                                          "user name and the URI has none (user@host)")
            return user, auth[1]
        conf, looked = self._auth_conf(uri)
        user = password = None
        if conf is not None:
            try:
                user = (conf.lookup(_SERVICE, uri.host, "authname") or
                        conf.lookup(_SERVICE, uri.host, "username"))
                password = conf.lookup(_SERVICE, uri.host, "password")
            except ConfSyntaxError as exc:
                raise AuthenticationError(f"auth.conf: {exc}") from None
        if callable(auth) and (user is None or password is None):
            user, password = await self._ask(auth, uri, mechanism, user, password)
        user = user or uri.user
        where = ", ".join(looked)
        if not user:
            raise AuthenticationError(
                f"SASL {mechanism} on {uri.uri}: no user name (not in the URI, auth= or "
                f"auth.conf; looked at {where})")
        if password is None:
            host = uri.host or "localhost"
            raise AuthenticationError(
                f"SASL {mechanism} on {uri.uri}: no password for {user!r}: give "
                f"auth=(user, password) or a callback, or an auth.conf with "
                f"[auth-{_SERVICE}-{host}] or [auth-{_SERVICE}-default] (looked at {where})")
        return user, password

    @staticmethod
    def _auth_conf(uri: ConnectionURI) -> tuple[AuthConf | None, list[str]]:
        try:
            return find_auth_conf(uri.params)
        except ConfSyntaxError as exc:
            raise AuthenticationError(f"auth.conf: {exc}") from None
        except OSError as exc:
            raise AuthenticationError(f"cannot read auth.conf {exc.filename}: "
                                      f"{exc.strerror or exc}") from None

    @staticmethod
    async def _ask(callback: AuthCallback, uri: ConnectionURI, mechanism: str,
                   user: str | None, password: str | None) -> tuple[str | None, str | None]:
        """Ask the callback, in one list, for what is still missing (as libvirt does)."""
        wanted = []
        if user is None:
            wanted.append(Credential(CredentialType.AUTHNAME,
                                     f"User name for {uri.uri} ({mechanism})",
                                     default=uri.user))
        if password is None:
            wanted.append(Credential(CredentialType.PASSPHRASE,
                                     f"Password for {user or uri.user or 'the user'} "
                                     f"on {uri.uri}"))
        try:
            outcome = callback(wanted)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as exc:
            raise AuthenticationError(f"SASL {mechanism} on {uri.uri}: the auth callback "
                                      f"failed: {type(exc).__name__}: {exc}") from exc
        for credential in wanted:
            value = credential.result if credential.result is not None else credential.default
            if value is not None:
                try:
                    _check_text(f"the auth callback's {credential.type.name} credential",
                                value, AuthenticationError)
                except AuthenticationError as exc:
                    raise AuthenticationError(f"SASL {mechanism} on {uri.uri}: {exc}") from None
            if credential.type is CredentialType.AUTHNAME:
                user = value
            else:
                password = value
        return user, password

    def accepted(self, user: str, password: str) -> None:
        """The daemon took these: use them for every further socket."""
        self._accepted = (user, password)

    def refused(self) -> None:
        """The daemon refused: ask (or read) again next time."""
        self._accepted = None


async def authenticate(channel: Channel, offered: list[int], uri: ConnectionURI,
                       credentials: Any = None) -> None:
    """Satisfy the server's ``offered`` authentication types on ``channel``.

    ``credentials``: a ``Credentials``, or what ``connect(auth=)`` takes."""
    kind = _choose_type(offered, uri)
    if kind == AUTH_POLKIT:
        await _polkit(channel, uri)
    elif kind == AUTH_SASL:
        source = credentials if isinstance(credentials, Credentials) else \
            Credentials(credentials)
        await _sasl(channel, uri, source)


def _choose_type(offered: list[int], uri: ConnectionURI) -> int:
    """libvirt's rule: ``?auth=`` picks one the server offers, else the first offered."""
    if not offered:
        return AUTH_NONE
    names = ", ".join(_NAMES.get(t, str(t)) for t in offered)
    wanted = uri.params.get("auth")
    if wanted:
        lower = wanted.lower()
        if lower == "sasl" or lower.startswith("sasl."):
            kind = AUTH_SASL
        elif lower == "polkit":
            kind = AUTH_POLKIT
        else:
            raise AuthenticationError(f"{uri.uri}: unknown authentication type {wanted!r} "
                                      "(auth= takes sasl, sasl.MECHANISM or polkit)")
        if kind not in offered:
            raise AuthenticationError(f"{uri.uri}: authentication type {wanted!r} was asked "
                                      f"for, but the server offers {names}")
        return kind
    kind = offered[0]
    if kind not in _NAMES:
        raise AuthenticationError(f"{uri.uri}: the server requires authentication type "
                                  f"{kind}, which aiovirt does not know (offered: {names})")
    return kind


async def _polkit(channel: Channel, uri: ConnectionURI) -> None:
    try:
        await channel.call(_P[remote.REMOTE_PROC_AUTH_POLKIT])
    except LibvirtError as exc:
        raise AuthenticationError(
            f"{uri.uri}: polkit refused access (the daemon asked polkit whether this UNIX "
            f"user may use libvirt): {exc.message}") from exc


def _needs_security_layer(uri: ConnectionURI, offered: str) -> AuthenticationError:
    host = uri.host or "HOST"
    return AuthenticationError(
        f"{uri.uri}: over plain {uri.transport.upper()} libvirtd requires a SASL security "
        f"layer (SSF >= 56) that aiovirt's SASL mechanisms do not provide (server offers: "
        f"{offered or 'no mechanism'}); connect with TLS ({uri.driver}+tls://{host}"
        f"{uri.path}) or through a UNIX socket (or SSH) instead")


async def _sasl(channel: Channel, uri: ConnectionURI, source: Credentials) -> None:
    insecure = uri.transport in _INSECURE
    try:
        init = await channel.call(_P[remote.REMOTE_PROC_AUTH_SASL_INIT])
    except LibvirtError as exc:
        if insecure:   # libvirtd lists no mechanism without a security layer: INIT fails
            raise _needs_security_layer(uri, "") from exc
        raise AuthenticationError(f"{uri.uri}: the daemon could not start SASL: "
                                  f"{exc.message}") from exc
    offered = parse_mechlist(init.mechlist)
    listed = " ".join(offered) or "none"
    if insecure:
        raise _needs_security_layer(uri, listed)
    name = _choose_mechanism(uri, offered, listed, kerberos=not isinstance(source.auth, tuple))
    if name == "GSSAPI":
        await _kerberos(channel, uri, source)
        return
    user, password = await source.get(uri, name)
    try:
        await _exchange(channel, make_mechanism(name, user, password))
    except LibvirtError as exc:
        source.refused()
        raise AuthenticationError(
            f"{uri.uri}: SASL {name} authentication as {user!r} failed: the daemon refused "
            f"it (wrong password, or unknown user; the daemon says: {exc.message})") from exc
    except SaslError as exc:
        source.refused()
        raise AuthenticationError(f"{uri.uri}: SASL {name} authentication as {user!r} "
                                  f"failed: {exc}") from exc
    source.accepted(user, password)


async def _kerberos(channel: Channel, uri: ConnectionURI, source: Credentials) -> None:
    """GSSAPI with the credential cache's ticket, or with ``auth=(principal, password)``."""
    pair = source.auth if isinstance(source.auth, tuple) else None
    principal = (pair[0] or uri.user) if pair is not None else None
    who = f"as {principal!r}" if principal else "with the Kerberos credential cache"
    try:
        mech = Gssapi(uri.host or "localhost", principal, pair[1] if pair else None)
        await _exchange(channel, mech)
    except LibvirtError as exc:
        raise AuthenticationError(
            f"{uri.uri}: SASL GSSAPI authentication {who} failed: the daemon refused it (the "
            f"daemon says: {exc.message})") from exc
    except SaslError as exc:
        raise AuthenticationError(f"{uri.uri}: SASL GSSAPI authentication {who} failed: "
                                  f"{exc}") from exc


def _choose_mechanism(uri: ConnectionURI, offered: list[str], listed: str,
                      kerberos: bool = True) -> str:
    """``?auth=sasl.MECH`` if the server offers it and we implement it, else the strongest
    we share (GSSAPI only if ``kerberos``, or if nothing else is shared); PLAIN only over
    TLS.  Errors name what was offered."""
    tls = uri.transport == "tls"
    wanted = uri.params.get("auth", "")
    if wanted.lower().startswith("sasl."):
        mech = wanted[5:].upper()
        if mech not in offered:
            raise AuthenticationError(f"{uri.uri}: SASL mechanism {mech} is not offered by "
                                      f"the server (it offers {listed})")
        if mech not in IMPLEMENTED:
            raise AuthenticationError(f"{uri.uri}: SASL mechanism {mech} is not implemented "
                                      f"by aiovirt (it has {', '.join(IMPLEMENTED)})")
        if mech == "PLAIN" and not tls:
            raise _plain_refused(uri)
        return mech
    chosen = choose_mechanism(offered, allow_plain=tls, kerberos=kerberos)
    if chosen is None and not kerberos:
        chosen = choose_mechanism(offered, allow_plain=tls, kerberos=True)
    if chosen is not None:
        return chosen
    if "PLAIN" in offered and not tls:
        raise _plain_refused(uri)
    if "GSSAPI" in offered and not gssapi_available():
        raise AuthenticationError(
            f"{uri.uri}: the server offers SASL mechanisms {listed}; GSSAPI (Kerberos) needs "
            "the optional gssapi package: pip install 'aiovirt[gssapi]'")
    raise AuthenticationError(
        f"{uri.uri}: the server offers SASL mechanisms {listed}, none of which aiovirt "
        "implements (it has GSSAPI with aiovirt[gssapi], SCRAM-SHA-256, SCRAM-SHA-1, and "
        "PLAIN over TLS; not DIGEST-MD5)")


def _plain_refused(uri: ConnectionURI) -> AuthenticationError:
    return AuthenticationError(
        f"{uri.uri}: refusing SASL PLAIN over the {uri.transport} transport: it sends the "
        "password in clear, so aiovirt uses it only over TLS (offer SCRAM-SHA-256 on the "
        "daemon's mech_list, or connect with +tls)")


async def _exchange(channel: Channel, mech: Mechanism) -> None:
    """AUTH_SASL_START, then AUTH_SASL_STEP until the server says complete and the
    mechanism has checked the server's last word (mutual authentication)."""
    if mech.blocking:   # may ask a KDC for a ticket, hash for long: not on the event loop
        initial = await anyio.to_thread.run_sync(mech.initial, abandon_on_cancel=True)
    else:
        initial = mech.initial()
    ret = await channel.call(_P[remote.REMOTE_PROC_AUTH_SASL_START], remote.AuthSaslStartArgs(
        mech.name, 1 if initial is None else 0, initial or b""))
    for _ in range(_MAX_STEPS):
        data = None if ret.nil else bytes(ret.data)
        response: bytes | None = None
        if data is not None and (data or not mech.done):
            if mech.blocking:
                response = await anyio.to_thread.run_sync(mech.step, data,
                                                          abandon_on_cancel=True)
            else:
                response = mech.step(data)
        if ret.complete:
            if not mech.done:
                raise SaslError(f"{mech.name}: the server declared success without proving "
                                "it knows the password")
            return
        ret = await channel.call(_P[remote.REMOTE_PROC_AUTH_SASL_STEP], remote.AuthSaslStepArgs(
            1 if response is None else 0, response or b""))
    raise SaslError(f"{mech.name}: the server did not finish within {_MAX_STEPS} steps")
