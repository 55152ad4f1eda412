"""Reading and checking request inputs (query strings and JSON bodies) into the arguments of
``compose``, ``address_domain``/``place``, ``Provisioning`` and ``teardown``.

Every check raises ``HTTPError`` (422 unless said otherwise) naming the field and what was
expected, so that a request is refused whole before anything is done.  Messages repeat about
100 characters of any one input at most, and job and teardown errors are cut to
``MAX_MESSAGE`` characters: a hostile body cannot make a large response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..address import AddressError, Tunables
from ..address.model import MAX_HOTPLUG_RESERVE
from ..compose import Library
from ..errors import InvalidURI, XMLInputError
from ..provision import GuestSpec, ProvisionError, Provisioning, SpecError
from ..provision.spec import excerpt
from ..client.uri import ConnectionURI, parse_uri
from .http import HTTPError, Request

__all__ = ["ComposeInput", "HostPolicy", "JobInput", "TeardownInput", "compose_input",
           "check_job", "job_input", "query_tunables", "teardown_input", "tunables"]


MAX_MESSAGE = 500   # characters of an error message about a job or teardown body


def _fail(where: str, message: str, status: int = 422) -> HTTPError:
    return HTTPError(status, f"{where}: {message}")


def _clipped(exc: HTTPError) -> HTTPError:
    """``exc`` with its message cut to ``MAX_MESSAGE`` characters."""
    if len(exc.message) > MAX_MESSAGE:
        exc.message = f"{exc.message[:MAX_MESSAGE]}... (cut)"
        exc.args = (exc.message,)
    return exc


def _only(data: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        shown = ", ".join(excerpt(key, 40) for key in unknown[:5])
        raise _fail(where, f"unknown field{'s' if len(unknown) > 1 else ''} "
                           f"{shown}{', ...' if len(unknown) > 5 else ''} (known: "
                           f"{', '.join(known)})")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"expected a string, not {type(value).__name__}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list of strings, not {type(value).__name__}")
    return [_string(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _mapping(value: Any, where: str) -> dict[str, str]:
    """An object of string values (numbers are taken as their text)."""
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object of strings, not {type(value).__name__}")
    out = {}
    for key, item in value.items():
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        out[key] = _string(item, f"{where}.{excerpt(key, 40)}")
    return out


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected true or false, not {excerpt(value)}")
    return value


def _int(value: Any, where: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _fail(where, f"expected a whole number of at least {low}, not "
                           f"{excerpt(value)}")
    return value


def tunables(value: Any, where: str) -> Tunables:
    """Addressing tunables from JSON: ``{hotplug_reserve, placement, multifunction}``."""
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object of tunables, not {type(value).__name__}")
    _only(value, ("hotplug_reserve", "placement", "multifunction"), where)
    if "hotplug_reserve" in value:
        _int(value["hotplug_reserve"], f"{where}.hotplug_reserve")
    for key in ("placement", "multifunction"):
        if value.get(key) is not None:
            _string(value[key], f"{where}.{key}")
    try:
        return Tunables(**value)
    except AddressError as exc:
        raise _fail(where, str(exc)) from None


# -- hosts --------------------------------------------------------------------------------------

MAX_HOSTS = 64   # hosts one request may name
# URI parameters that make the client run a local program or use a local file (or the unix
# socket= any local socket): a host a request names, rather than the operator, may not have them
LOCAL_PARAMS = ("command", "netcat", "keyfile", "known_hosts", "known_hosts_verify", "pkipath",
                "authfile", "socket")


@dataclass(frozen=True)
class HostPolicy:
    """The hosts a service works on by default, and whether requests may name others."""

    hosts: tuple[str, ...] = ()
    allow_any: bool = False

    def choose(self, value: Any, where: str) -> list[str]:
        """The hosts a request names (``value``), or the defaults when it names none."""
        if isinstance(value, list) and len(value) > MAX_HOSTS:
            raise _fail(where, f"{len(value)} hosts: one request may name at most {MAX_HOSTS}")
        hosts = self.hosts if value is None else tuple(_strings(value, where))
        if not hosts:
            raise _fail(where, "no hosts: name them in the request, or start the server "
                               "with --uri")
        for index, host in enumerate(hosts):
            try:
                uri = parse_uri(host)
            except InvalidURI as exc:
                raise _fail(f"{where}[{index}]", str(exc)) from None
            if host in self.hosts:
                continue
            if not self.allow_any:
                raise _fail(f"{where}[{index}]", f"{excerpt(host)} is not one of this "
                                                 "server's hosts (its --uri list); start it "
                                                 "with --allow-any-host to allow others", 403)
            self._check_named(uri, f"{where}[{index}]")
        return list(dict.fromkeys(hosts))

    @staticmethod
    def _check_named(uri: ConnectionURI, where: str) -> None:
        """A host a request names (not one of ``--uri``) may not make this server run a
        local program or read a local file: 403 for the ``ext`` transport or such a
        parameter."""
        if uri.transport == "ext":
            raise _fail(where, "the ext transport runs a local command: a request may not "
                               "name it (give it to the server with --uri)", 403)
        for name in LOCAL_PARAMS:
            if name in uri.params:
                raise _fail(where, f"the URI parameter {name}= names a local program, file "
                                   "or socket: a request may not give it (give such a host "
                                   "to the server with --uri)", 403)


# -- compose and address ------------------------------------------------------------------------

@dataclass
class ComposeInput:
    """The arguments of one ``compose`` call."""

    domain: str
    source: str
    profiles: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    caps: str | None = None
    domcaps: str | None = None
    address: Tunables | bool = False
    validate: bool | None = None
    upgrade: bool = False
    record: bool = True
    input_wins: bool = False


def query_tunables(request: Request) -> Tunables:
    """Tunables from ``?reserve=N&placement=pci|pcie&pack=true``."""
    reserve = request.number("reserve", 0, high=MAX_HOTPLUG_RESERVE)
    try:
        return Tunables(hotplug_reserve=int(reserve or 0), placement=request.arg("placement"),
                        multifunction="pack" if request.flag("pack") else "spread")
    except AddressError as exc:
        raise HTTPError(422, f"query parameters: {exc}") from None


async def compose_input(request: Request) -> ComposeInput:
    """From an XML body and the query (``?profile=&param=K=V&address=``...), or from a JSON
    body ``{"domain": XML, "profiles", "params", "caps", "domcaps", "address", ...}``."""
    kind = request.require_type("application/xml", "text/xml", "application/json")
    if kind != "application/json":
        params = {}
        for pair in request.args("param"):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise HTTPError(422, f"query parameter param={pair!r}: expected NAME=VALUE "
                                     "or PROFILE.NAME=VALUE")
            params[key] = value
        return ComposeInput(await request.text(), "request body", request.args("profile"),
                            params, address=query_tunables(request) if request.flag("address")
                            else False, validate=request.flag("validate", None),
                            upgrade=bool(request.flag("upgrade")),
                            record=bool(request.flag("record", True)),
                            input_wins=bool(request.flag("input_wins")))
    data = await request.json_object()
    _only(data, ("domain", "profiles", "params", "caps", "domcaps", "address", "validate",
                 "upgrade", "record", "input_wins"), "request body")
    if "domain" not in data:
        raise HTTPError(422, "request body: the field 'domain' (the domain XML) is missing")
    address = data.get("address", False)
    if not isinstance(address, bool):
        address = tunables(address, "address")
    validate = data.get("validate")
    return ComposeInput(
        _string(data["domain"], "domain"), "domain",
        _strings(data.get("profiles", []), "profiles"), _mapping(data.get("params", {}),
                                                                 "params"),
        caps=_string(data["caps"], "caps") if data.get("caps") is not None else None,
        domcaps=_string(data["domcaps"], "domcaps") if data.get("domcaps") is not None
        else None, address=address,
        validate=None if validate is None else _bool(validate, "validate"),
        upgrade=_bool(data.get("upgrade", False), "upgrade"),
        record=_bool(data.get("record", True), "record"),
        input_wins=_bool(data.get("input_wins", False), "input_wins"))


# -- jobs and teardown --------------------------------------------------------------------------

@dataclass
class JobInput:
    """A checked provisioning request: the run, ready to start, and its hosts."""

    run: Provisioning
    hosts: list[str]


JOB_FIELDS = ("specs", "hosts", "placement", "on_existing", "rollback", "concurrency",
              "start_timeout")


def job_input(data: dict[str, Any], policy: HostPolicy, library: Library, *,
              max_guests: int) -> JobInput:
    """Check a job request whole: every spec parses and composes (offline, without host
    capabilities), the options are valid, the hosts allowed; nothing is started here."""
    try:
        return _job_input(data, policy, library, max_guests=max_guests)
    except HTTPError as exc:
        raise _clipped(exc) from None


def _job_input(data: dict[str, Any], policy: HostPolicy, library: Library, *,
               max_guests: int) -> JobInput:
    _only(data, JOB_FIELDS, "request body")
    raw = data.get("specs")
    if not isinstance(raw, list) or not raw:
        raise HTTPError(422, "specs: expected a non-empty list of guest specs")
    specs = []
    for index, item in enumerate(raw):
        try:
            specs.append(GuestSpec.from_dict(item))
        except ProvisionError as exc:
            raise _fail(f"specs[{index}]", str(exc)) from None
    total = sum(spec.count for spec in specs)
    if total > max_guests:
        raise HTTPError(422, f"specs: {total} guests in one job is over this server's limit "
                             f"of {max_guests}")
    hosts = policy.choose(data.get("hosts"), "hosts")
    options: dict[str, Any] = {}
    for key in ("placement", "on_existing"):
        if key in data:
            options[key] = _string(data[key], key)
    if "rollback" in data:
        options["rollback"] = _bool(data["rollback"], "rollback")
    if data.get("concurrency") is not None:
        options["concurrency"] = _int(data["concurrency"], "concurrency", 1)
    if "start_timeout" in data:
        timeout = data["start_timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                not 0 < timeout <= 3600:
            raise _fail("start_timeout", f"expected seconds, more than 0 and at most 3600, "
                                         f"not {excerpt(timeout)}")
        options["start_timeout"] = float(timeout)
    for index, spec in enumerate(specs):
        try:
            spec.names()
        except (ProvisionError, XMLInputError) as exc:
            raise _fail(f"specs[{index}]", str(exc)) from None
    try:
        run = Provisioning(hosts, specs, library=library, **options)
    except (ProvisionError, XMLInputError) as exc:
        raise HTTPError(422, str(exc)) from None
    return JobInput(run, hosts)


def check_job(given: JobInput) -> JobInput:
    """Compose every spec of a parsed job offline (``Provisioning.check``), its errors as
    the request's; the composing is the costly part, for a worker thread."""
    try:
        given.run.check()
    except SpecError as exc:
        raise _clipped(_fail(f"specs[{exc.index}]", exc.reason)) from None
    except (ProvisionError, XMLInputError) as exc:
        raise _clipped(HTTPError(422, str(exc))) from None
    return given


@dataclass
class TeardownInput:
    hosts: list[str]
    run: str | None = None
    names: list[str] | None = None
    labels: dict[str, str] | None = None


def teardown_input(data: dict[str, Any], policy: HostPolicy) -> TeardownInput:
    """``{"hosts"?, "run"?, "names"?, "labels"?, "include_foreign"?}``: at least one of the
    filters.  The service only removes guests aiovirt made: ``"include_foreign": true`` is
    refused (403), since a remote client should not reach guests it did not provision."""
    try:
        _only(data, ("hosts", "run", "names", "labels", "include_foreign"), "request body")
        if data.get("include_foreign") is not None and \
                _bool(data["include_foreign"], "include_foreign"):
            raise _fail("include_foreign", "this service removes only guests aiovirt made "
                                           "(with its provisioning metadata); remove others "
                                           "on the host (aiovirt teardown --include-foreign)",
                        403)
        run = _string(data["run"], "run") if data.get("run") is not None else None
        names = _strings(data["names"], "names") if data.get("names") is not None else None
        labels = _mapping(data["labels"], "labels") if data.get("labels") is not None \
            else None
        if run is None and not names and not labels:
            raise HTTPError(422, "request body: give run, names or labels to choose the "
                                 "guests (teardown never removes every guest)")
        return TeardownInput(policy.choose(data.get("hosts"), "hosts"), run, names, labels)
    except HTTPError as exc:
        raise _clipped(exc) from None
