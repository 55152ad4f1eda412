"""SASL client mechanisms, sans-IO: SCRAM-SHA-256, SCRAM-SHA-1 (RFC 5802, RFC 7677), PLAIN,
and GSSAPI (RFC 4752, Kerberos) with the optional ``gssapi`` package (``aiovirt[gssapi]``).

A mechanism turns the server's challenges into the client's responses and nothing else: it
never reads the libvirt socket, so the RFC test vectors exercise it directly.  ``auth``
carries the bytes over ``AUTH_SASL_START`` / ``AUTH_SASL_STEP``.  SCRAM runs without channel
binding (GS2 header ``n,,``) and checks the server's signature: a server that cannot prove
it knows the password is refused.  GSSAPI asks for mutual authentication and takes no
security layer (libvirtd wants none over TLS or a UNIX socket); its first message may ask
the KDC for a ticket, so ``blocking`` tells ``auth`` to make it off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Any

__all__ = ["IMPLEMENTED", "Gssapi", "Mechanism", "Plain", "SaslError", "Scram",
           "choose_mechanism", "gssapi_available", "make_mechanism", "parse_mechlist"]

_GS2_HEADER = b"n,,"          # no channel binding, no authorization identity
_MAX_ITERATIONS = 1_000_000   # a server asking for more is refused (a CPU-time trap: a
                              # million rounds take ~0.5 s; Cyrus SASL's default is 4096)


class SaslError(ValueError):
    """The exchange broke: a malformed or dishonest server message, or a server error."""


class Mechanism:
    """One SASL exchange from the client's side.

    ``initial()`` is the client's first message (None: the mechanism sends none first);
    ``step(challenge)`` answers each server message; ``done`` is true once the client has
    nothing left to check (for SCRAM: the server's signature was verified)."""

    name: str = ""
    done: bool = False
    # ``initial()`` and ``step()`` may take long (a KDC on the network, SCRAM's salted
    # hash): ``auth`` runs them in a thread, so the event loop never waits on them
    blocking: bool = False

    def initial(self) -> bytes | None:
        raise NotImplementedError

    def step(self, challenge: bytes) -> bytes:
        raise NotImplementedError


class Plain(Mechanism):
    """PLAIN (RFC 4616): the password in clear, so only ever over TLS."""

    name = "PLAIN"

    def __init__(self, username: str, password: str, authzid: str = "") -> None:
        for what, value in (("user name", username), ("password", password),
                            ("authorization id", authzid)):
            if "\0" in value:
                raise SaslError(f"PLAIN: the {what} contains a NUL character")
        self._message = f"{authzid}\0{username}\0{password}".encode()

    def initial(self) -> bytes:
        self.done = True
        return self._message

    def step(self, challenge: bytes) -> bytes:
        if challenge:
            raise SaslError("PLAIN: the server sent a challenge after the credentials")
        return b""


def _saslname(name: str) -> str:
    """RFC 5802 §5.1: ``=`` and ``,`` in a user name are escaped."""
    return name.replace("=", "=3D").replace(",", "=2C")


def _attributes(message: bytes, what: str) -> list[tuple[str, str]]:
    """Split a SCRAM message into ``(letter, value)`` pairs, in order."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{what} is not UTF-8") from None
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise SaslError(f"{what} is malformed: {text!r}")
        pairs.append((part[0], part[2:]))
    return pairs


class Scram(Mechanism):
    """SCRAM-SHA-256 or SCRAM-SHA-1, client side, without channel binding.

    ``nonce`` fixes the client nonce (for test vectors); otherwise 24 random bytes, base64.
    The password is used as UTF-8 without SASLprep, as Cyrus SASL (libvirtd's library) does."""

    HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}
    blocking = True   # the salted hash: up to ``_MAX_ITERATIONS`` rounds

    def __init__(self, name: str, username: str, password: str,
                 nonce: str | None = None) -> None:
        if name not in self.HASHES:
            raise SaslError(f"{name}: not a SCRAM mechanism aiovirt implements")
        self.name = name
        self._hash = self.HASHES[name]
        self._password = password.encode("utf-8")
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(24)).decode()
        if "," in self._nonce:
            raise SaslError("a SCRAM nonce cannot contain ','")
        self._first_bare = f"n={_saslname(username)},r={self._nonce}".encode()
        self._server_signature: bytes | None = None
        self._state = "initial"

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self._hash).digest()

    def initial(self) -> bytes:
        if self._state != "initial":
            raise SaslError(f"{self.name}: the exchange has already started")
        self._state = "first-sent"
        return _GS2_HEADER + self._first_bare

    def step(self, challenge: bytes) -> bytes:
        if self._state == "first-sent":
            self._state = "final-sent"
            return self._client_final(challenge)
        if self._state == "final-sent":
            self._verify(challenge)
            self._state = "done"
            self.done = True
            return b""
        raise SaslError(f"{self.name}: unexpected server message after the exchange ended")

    def _client_final(self, server_first: bytes) -> bytes:
        attrs = _attributes(server_first, f"{self.name} server-first-message")
        if attrs and attrs[0][0] == "e":
            raise SaslError(f"{self.name}: the server says {attrs[0][1]!r}")
        if attrs and attrs[0][0] == "m":
            raise SaslError(f"{self.name}: the server demands an extension ({attrs[0][1]!r})")
        values = dict(attrs)
        if [k for k, _ in attrs[:3]] != ["r", "s", "i"]:
            raise SaslError(f"{self.name}: server-first-message lacks r=, s= or i=: "
                            f"{server_first!r}")
        nonce = values["r"]
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise SaslError(f"{self.name}: the server's nonce does not extend ours")
        try:
            salt = base64.b64decode(values["s"], validate=True)
        except ValueError:
            raise SaslError(f"{self.name}: the salt is not base64: {values['s']!r}") from None
        if not re.fullmatch(r"[0-9]{1,9}", values["i"]) or \
                not 0 < int(values["i"]) <= _MAX_ITERATIONS:
            raise SaslError(f"{self.name}: iteration count {values['i'][:40]!r} is not a number "
                            f"from 1 to {_MAX_ITERATIONS}")
        salted = hashlib.pbkdf2_hmac(self._hash, self._password, salt, int(values["i"]))
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        without_proof = b"c=" + base64.b64encode(_GS2_HEADER) + b",r=" + nonce.encode()
        auth_message = self._first_bare + b"," + server_first + b"," + without_proof
        signature = self._hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return without_proof + b",p=" + base64.b64encode(proof)

    def _verify(self, server_final: bytes) -> None:
        attrs = _attributes(server_final, f"{self.name} server-final-message")
        if attrs[0][0] == "e":
            raise SaslError(f"{self.name}: the server says {attrs[0][1]!r}")
        if attrs[0][0] != "v":
            raise SaslError(f"{self.name}: server-final-message lacks v=: {server_final!r}")
        try:
            signature = base64.b64decode(attrs[0][1], validate=True)
        except ValueError:
            raise SaslError(f"{self.name}: the server signature is not base64") from None
        assert self._server_signature is not None
        if not hmac.compare_digest(signature, self._server_signature):
            raise SaslError(f"{self.name}: the server's signature is wrong: it does not know "
                            "the password (an impostor, or a broken server)")


_NO_LAYER = 1        # RFC 4752 security layer bits: 1 none, 2 integrity, 4 confidentiality


def gssapi_available() -> bool:
    """Whether the optional ``gssapi`` package (``aiovirt[gssapi]``) can be imported."""
    try:
        import gssapi  # noqa: F401
    except ImportError:
        return False
    return True


class Gssapi(Mechanism):
    """GSSAPI (RFC 4752): Kerberos V5 through the system's GSS-API library.

    Credentials come from the credential cache (``kinit``, ``KRB5CCNAME``), or, given a
    ``password``, are fetched for ``principal`` from the KDC without touching any cache.  The
    service is ``libvirt@HOST``; the server must prove itself (mutual authentication)."""

    name = "GSSAPI"
    blocking = True

    def __init__(self, host: str, principal: str | None = None,
                 password: str | None = None, service: str = "libvirt") -> None:
        try:
            import gssapi
        except ImportError:
            raise SaslError("GSSAPI needs the optional gssapi package "
                            "(pip install 'aiovirt[gssapi]'; it builds against libkrb5-dev)"
                            ) from None
        self._gssapi = gssapi
        self.target = f"{service}@{host}"
        self.principal = principal
        self._password = password
        self._context: Any = None
        self._state = "initial"

    def _failed(self, exc: Exception, doing: str) -> SaslError:
        words = exc.gen_message() if hasattr(exc, "gen_message") else str(exc)
        hint = ""
        if self._password is None and isinstance(
                exc, self._gssapi.exceptions.MissingCredentialsError):
            hint = " (no Kerberos ticket: run kinit, or give auth=(principal, password))"
        return SaslError(f"GSSAPI: {doing} failed: {words}{hint}")

    def initial(self) -> bytes:
        if self._state != "initial":
            raise SaslError("GSSAPI: the exchange has already started")
        gssapi = self._gssapi
        wanted = gssapi.RequirementFlag
        flags = (wanted.mutual_authentication | wanted.integrity |
                 wanted.out_of_sequence_detection)
        creds = None
        if self._password is not None:
            if not self.principal:
                raise SaslError("GSSAPI: a password was given without a principal")
            try:
                name = gssapi.Name(self.principal, gssapi.NameType.kerberos_principal)
                creds = gssapi.raw.acquire_cred_with_password(
                    name, self._password.encode(), usage="initiate").creds
            except gssapi.exceptions.GSSError as exc:
                raise self._failed(exc, f"logging in as {self.principal!r} with the password "
                                        "(a wrong password, or an unknown principal?)") from None
        try:
            target = gssapi.Name(self.target, gssapi.NameType.hostbased_service)
            self._context = gssapi.SecurityContext(name=target, creds=creds, flags=flags,
                                                   usage="initiate")
            token = self._context.step()
        except gssapi.exceptions.GSSError as exc:
            raise self._failed(exc, f"getting a ticket for {self.target}") from None
        self._state = "context"
        return token or b""

    def step(self, challenge: bytes) -> bytes:
        context = self._context
        gssapi = self._gssapi
        if self._state == "context" and not context.complete:
            try:
                token = context.step(challenge)
            except gssapi.exceptions.GSSError as exc:
                raise self._failed(exc, f"checking {self.target}'s answer") from None
            return token or b""
        if self._state == "context":   # the context stands: this is the server's offer
            try:
                offer = context.unwrap(challenge).message
            except gssapi.exceptions.GSSError as exc:
                raise self._failed(exc, "reading the security layer offer") from None
            if len(offer) != 4:
                raise SaslError(f"GSSAPI: the security layer offer has {len(offer)} bytes, "
                                "not 4")
            if not offer[0] & _NO_LAYER:
                raise SaslError("GSSAPI: the server insists on a SASL security layer, which "
                                "aiovirt does not provide; connect with TLS or through a UNIX "
                                "socket (or SSH) instead")
            self._state = "done"
            self.done = True
            # no layer, no maximum size, no authorization identity (act as who we are)
            return context.wrap(bytes((_NO_LAYER, 0, 0, 0)), False).message
        raise SaslError("GSSAPI: unexpected server message after the exchange ended")


# Strongest first; PLAIN only where the channel is encrypted (the caller decides); GSSAPI
# only where its package is installed and the caller brings no password for the others.
IMPLEMENTED = ("GSSAPI", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")


def parse_mechlist(mechlist: str) -> list[str]:
    """The mechanisms of a server's list (Cyrus separates them with spaces or commas)."""
    return [m.upper() for m in mechlist.replace(",", " ").split()]


def choose_mechanism(offered: Iterable[str], allow_plain: bool,
                     kerberos: bool = False) -> str | None:
    """The strongest mechanism both sides have, or None; GSSAPI only if ``kerberos`` (and
    its package is installed)."""
    offered = {m.upper() for m in offered}
    for name in IMPLEMENTED:
        if name in offered and (name != "PLAIN" or allow_plain) and (
                name != "GSSAPI" or (kerberos and gssapi_available())):
            return name
    return None


def make_mechanism(name: str, username: str, password: str) -> Mechanism:
    """A fresh client for password mechanism ``name`` (SCRAM or PLAIN; GSSAPI is ``Gssapi``)."""
    if name == "PLAIN":
        return Plain(username, password)
    return Scram(name, username, password)
