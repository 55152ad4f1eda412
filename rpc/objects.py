"""Generate the object API's methods (``aiovirt/api/generated.py``) from the libvirt API map.

``python -m rpc LIBVIRT_SOURCE_TREE`` calls ``write`` after building the map
(rpc/apimap.py): every public function the map puts in the "remote" category becomes an
``async`` method of a mixin class, unless one of the SKIP rules below says why not.

* The class comes from the C function's first argument (``virDomainPtr`` -> ``Domain``,
  ``virConnectPtr`` -> ``Connection``...): ``CLASSES``.
* The name is the function's without ``vir`` and the class prefix, in snake_case
  (``virDomainSnapshotCreateXML`` on ``Domain`` -> ``snapshot_create_xml``).
* The procedure is the one whose name is the function's (``virDomainGetInfo`` ->
  ``DOMAIN_GET_INFO``), or the single one it sends.
* Parameters are the procedure's argument fields after the object's own reference, in
  snake_case; what the client library adds on top of the wire is applied by the small
  named rules below (``RULES`` documents them; each method's code says which it used).

The output depends only on the map's categories, procedures and notes (never on which
aiovirt methods cover a function), on ``aiovirt.protocol`` and on the API descriptions'
``<info>`` texts, so regenerating is byte-for-byte stable.
"""

from __future__ import annotations

import dataclasses
import inspect
import keyword
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from aiovirt.api.typedparams import PARAM_TYPES
from aiovirt.protocol.xdr import plain_hint

from . import apimap

OUT_PATH = Path("aiovirt") / "api" / "generated.py"
COMMAND = "python -m rpc LIBVIRT_SOURCE_TREE"



# C handle type -> (mixin class, handle class, module of the handle, name prefixes to strip)
CLASSES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "virConnectPtr": ("ConnectionGenerated", "Connection", "connection", ("Connect",)),
    "virDomainPtr": ("DomainGenerated", "Domain", "domain", ("Domain",)),
    "virNetworkPtr": ("NetworkGenerated", "Network", "network", ("Network",)),
    "virNetworkPortPtr": ("NetworkPortGenerated", "NetworkPort", "network", ("NetworkPort",)),
    "virStoragePoolPtr": ("StoragePoolGenerated", "StoragePool", "storage", ("StoragePool",)),
    "virStorageVolPtr": ("StorageVolumeGenerated", "StorageVolume", "storage",
                         ("StorageVol",)),
    "virNodeDevicePtr": ("NodeDeviceGenerated", "NodeDevice", "nodedev", ("NodeDevice",)),
    "virSecretPtr": ("SecretGenerated", "Secret", "secret", ("Secret",)),
    "virInterfacePtr": ("InterfaceGenerated", "Interface", "interface", ("Interface",)),
    "virNWFilterPtr": ("NWFilterGenerated", "NWFilter", "nwfilter", ("NWFilter",)),
    "virNWFilterBindingPtr": ("NWFilterBindingGenerated", "NWFilterBinding", "nwfilter",
                              ("NWFilterBinding",)),
    "virDomainSnapshotPtr": ("DomainSnapshotGenerated", "DomainSnapshot", "snapshot",
                             ("DomainSnapshot", "Domain")),
    "virDomainCheckpointPtr": ("DomainCheckpointGenerated", "DomainCheckpoint", "checkpoint",
                               ("DomainCheckpoint", "Domain")),
}
# wire reference type -> handle class (every Nonnull* of remote_protocol.x)
HANDLES = {
    "NonnullDomain": "Domain", "NonnullNetwork": "Network", "NonnullNetworkPort": "NetworkPort",
    "NonnullStoragePool": "StoragePool", "NonnullStorageVol": "StorageVolume",
    "NonnullNodeDevice": "NodeDevice", "NonnullSecret": "Secret",
    "NonnullInterface": "Interface", "NonnullNwfilter": "NWFilter",
    "NonnullNwfilterBinding": "NWFilterBinding", "NonnullDomainSnapshot": "DomainSnapshot",
    "NonnullDomainCheckpoint": "DomainCheckpoint",
}
HANDLE_MODULE = {cls: module for _, cls, module, _ in CLASSES.values()}
RPC_ATTR = {"REMOTE": "rpc", "QEMU": "qemu_rpc", "LXC": "lxc_rpc"}

# -- functions not generated: (rule, test, reason) --------------------------------------------
SKIP_BY_NAME: dict[str, str] = {
    "virConnectGetAllDomainStats":
        "hand-written: Connection.all_domain_stats (decodes the reply straight into dicts)",
    "virDomainListGetStats":
        "hand-written: Connection.domain_list_get_stats (the same fast decoder)",
}
SKIP_RULES: list[tuple[str, str]] = [
    ("stream", "opens a stream: hand-written in aiovirt/api/streams.py (screenshot, "
               "open_console, open_channel, download/upload, migrate_prepare_tunnel)"),
    ("fds", "passes or receives file descriptors: hand-written (Domain.start_with_files, "
            "open_graphics, open_graphics_fd, fd_associate, qemu_monitor_command_with_files, "
            "lxc_open_namespace; Connection.create_xml_with_files)"),
    ("event", "registers or deregisters event callbacks: hand-written subscriptions "
              "(domain_events, network_events... in aiovirt/api/events.py; "
              "connection_closed_events)"),
    ("multi", "drives a multi-step protocol across several procedures (and, for "
              "migration, several daemons): not a single call (Domain.migrate_to_uri, "
              "migrate_to_uri2, migrate_to_uri3 are hand-written for the peer-to-peer and "
              "direct migrations one call drives)"),
]

# -- what the client library adds, as rules the generator applies ----------------------------
RULES: dict[str, str] = {
    "handle-args": "object references among the arguments take handle objects (their "
                   "``_ref``); the object's own reference is ``self``",
    "typed-params-in": "a typed-parameter list argument takes a dict",
    "setter-types": "a typed-parameter setter learns each field's type from its getter "
                    "(Set<X> -> Get<X>) so the daemon's strict type check passes; fields the "
                    "getter does not report (or when it fails) are guessed by from_dict",
    "declared-types": "a typed-parameter setter without a getter types each field as libvirt "
                      "declares it (PARAM_TYPES in aiovirt/api/typedparams.py: the daemon "
                      "refuses any other type); fields it does not declare are guessed by "
                      "from_dict",
    "string-okay": "typed-parameter getters whose client library ORs "
                   "VIR_TYPED_PARAM_STRING_OKAY into flags do so too: libvirtd 9.0 supports "
                   "VIR_DRV_FEATURE_TYPED_PARAM_STRING, so it is not probed",
    "nparams-dance": "getters with nparams in the arguments and params + nparams in the "
                     "reply are called twice, as libvirt's callers do: nparams=0 to learn the "
                     "count, then with it",
    "allocating": "getters whose C API allocates the parameters (``virTypedParameterPtr "
                  "*params``) are one call: the daemon ignores nparams and sends them all",
    "nparams-max": "getters with nparams in the arguments but not in the reply ask for the "
                   "protocol's maximum",
    "per-cpu": "per-CPU typed parameters come back as one dict per CPU (strides of the "
               "reply's nparams)",
    "need-results": "``need_results`` is always 1 (the caller wants the objects)",
    "counted-list": "a reply of a list and its count (``ret``) returns the list",
    "in-band": "a reply whose ``ret`` field reports -1 raises LibvirtError naming the "
               "function",
    "uuid-string": "``*UUIDString`` functions take the UUID as text (or uuid.UUID)",
    "bool": "``Is*``/``Has*`` answers and autostart are bool",
    "stats-dict": "node CPU/memory statistics ({field: value} records) are a dict",
    "typed-params-out": "a typed-parameter list in the reply is a dict (to_dict)",
    "handles-out": "wire references in the reply become handle objects",
    "transport-secure": "virConnectIsSecure/IsEncrypted combine the daemon's answer with this "
                        "client's transport (secure: unix, tls, ssh, ext; encrypted: tls)",
    "no-id": "virDomainDestroy, virDomainSave and virDomainManagedSave leave the domain "
             "without an ID (-1, the handle's and the one sent with later calls), as "
             "libvirt's client resets its domain object's on success",
}
# the functions after which libvirt's client resets the domain's ID (gendispatch.pl)
ID_RESETS = frozenset({"virDomainDestroy", "virDomainSave", "virDomainManagedSave"})
VIR_TYPED_PARAM_STRING_OKAY = 4

# Functions whose rule-made name a hand-written method already takes with other semantics:
# the hand-written ``list_*`` return handles (ListAll* procedures), so the legacy listing
# functions get a name saying what they return; the hand-written ``Domain.attach_device``,
# ``destroy``... send the *Flags procedures, so the flag-less originals are ``*_legacy``.
RENAMES = {
    "virDomainAttachDevice": "attach_device_legacy",
    "virDomainDetachDevice": "detach_device_legacy",
    "virDomainDestroy": "destroy_legacy",
    "virDomainShutdown": "shutdown_legacy",
    "virDomainUndefine": "undefine_legacy",
    "virConnectListDomains": "list_domain_ids",
    "virConnectListNetworks": "list_network_names",
    "virConnectListSecrets": "list_secret_uuids",
    "virConnectListStoragePools": "list_storage_pool_names",
    "virStoragePoolListVolumes": "list_volume_names",
}


# -- names -----------------------------------------------------------------------------------
def snake(name: str) -> str:
    """``GetXMLDesc`` -> ``get_xml_desc``; ``NWFilter`` is one word."""
    name = name.replace("NWFilter", "Nwfilter")
    name = re.sub(r"([A-Z]{2,})s(?![a-z])", lambda m: m.group(1).capitalize() + "s", name)
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return name.lower()


def param_name(wire: str) -> str:
    name = snake(wire.rstrip("_"))
    return name + "_" if keyword.iskeyword(name) or name == "self" else name


def method_name(function: str, prefixes: tuple[str, ...]) -> str:
    if function in RENAMES:
        return RENAMES[function]
    stem = function[3:]
    for prefix in prefixes:
        if stem.startswith(prefix) and len(stem) > len(prefix) and stem[len(prefix)].isupper():
            stem = stem[len(prefix):]
            break
    return snake(stem)


def _norm(text: str) -> str:
    return text.replace("_", "").lower()


# -- inputs ----------------------------------------------------------------------------------
def load_api_xml(xml_dir: Path) -> dict[str, tuple[str | None, str, dict[str, str]]]:
    """function -> (first argument's C type, first sentence of its <info>, {argument: C
    type})."""
    out: dict[str, tuple[str | None, str, dict[str, str]]] = {}
    for section in ("libvirt", "qemu", "lxc"):
        root = ET.parse(Path(xml_dir) / apimap.API_XML[section]).getroot()
        for fn in root.iter("function"):
            args = fn.findall("arg")
            info = " ".join((fn.findtext("info") or "").strip().split("\n\n")[0].split())
            match = re.match(r"(.*?[.!?])(\s|$)", info)
            sentence = match.group(1) if match else info
            out[fn.get("name", "")] = (args[0].get("type") if args else None, sentence,
                                       {a.get("name", ""): a.get("type", "") for a in args})
    return out


def _protocols() -> dict[str, Any]:
    from aiovirt.protocol import lxc, qemu, remote
    return {"REMOTE": remote, "QEMU": qemu, "LXC": lxc}


def main_procedure(name: str, procs: list[str]) -> str | None:
    """The procedure named like the function, or the only one it sends (feature probes
    aside)."""
    procs = [p for p in procs if p != "REMOTE_PROC_CONNECT_SUPPORTS_FEATURE"]
    stem = _norm(name[3:])
    for proc in procs:
        program, _, rest = proc.partition("_PROC_")
        candidate = _norm(rest)
        if program == "QEMU":
            candidate = re.sub(r"^((?:connect)?domain)", r"\1qemu", candidate)
        elif program == "LXC":
            candidate = re.sub(r"^domain", "domainlxc", candidate)
        if candidate == stem:
            return proc
    return procs[0] if len(procs) == 1 else None


def skip_reason(name: str, entry: dict[str, Any], proc: str | None, info: Any) -> str | None:
    if name in SKIP_BY_NAME:
        return SKIP_BY_NAME[name]
    notes = " ".join(entry["notes"])
    reasons = dict(SKIP_RULES)
    if proc is None:
        return reasons["multi"]
    if info.stream:
        return reasons["stream"]
    if "file descriptors" in notes or "FD_PASSING" in notes or "WithFiles" in name or \
            name == "virDomainLxcOpenNamespace":
        return reasons["fds"]
    if re.search(r"Event(Register|Deregister)|CloseCallback", name):
        return reasons["event"]
    return None


# -- one method ------------------------------------------------------------------------------
@dataclasses.dataclass
class Method:
    function: str
    cls: str                # handle class (Connection, Domain...)
    name: str
    lines: list[str]
    rules: list[str]


class _Gen:
    def __init__(self, data: dict[str, Any],
                 api: dict[str, tuple[str | None, str, dict[str, str]]]) -> None:
        self.data = data
        self.api = api
        self.modules = _protocols()
        self.imports: set[str] = set()      # protocol module names used in hints
        self.handles: set[str] = set()      # handle classes named in hints

    # types ---------------------------------------------------------------------------------
    def hint(self, wire: str, module: str) -> str:
        """A wire field's annotation as a generated method's hint."""
        if wire == "list[TypedParam]":
            return "dict[str, Any]"
        mod = self.modules[module]

        def sub(m: re.Match[str]) -> str:
            word = m.group(0)
            if word in HANDLES:
                self.handles.add(HANDLES[word])
                return HANDLES[word]
            if word[0].isupper() and hasattr(mod, word):
                self.imports.add(mod.__name__.rsplit(".", 1)[-1])
                return f"{mod.__name__.rsplit('.', 1)[-1]}.{word}"
            if word[0].isupper() and hasattr(self.modules["REMOTE"], word):
                self.imports.add("remote")
                return f"remote.{word}"
            return word
        return re.sub(r"[A-Za-z_]\w*", sub, wire)

    def procedure(self, const: str) -> tuple[str, Any, Any]:
        program = const.split("_", 1)[0]
        module = self.modules[program]
        return program, module, module.PROCEDURES[getattr(module, const)]

    # the method ------------------------------------------------------------------------------
    def method(self, name: str, entry: dict[str, Any], cls_info: tuple[str, str, str, tuple[str, ...]],
               proc: str, functions: dict[str, dict[str, Any]],
               getters: dict[tuple[str, str], tuple[str, str]], twin: bool = False) -> Method:
        mixin, cls, _module, prefixes = cls_info
        program, module, info = self.procedure(proc)
        meth = method_name(name, prefixes)
        public_name = meth
        if twin:
            meth = f"_typed_param_types_{meth}"
        rules: list[str] = []
        conn = "self" if cls == "Connection" else "self._conn"
        modname = module.__name__.rsplit(".", 1)[-1]
        self.imports.add(modname)
        const = f"{modname}.{proc}"
        args_cls = f"{modname}.{info.args.__name__}" if info.args is not None else None

        def call(arguments: str) -> str:
            # ``start`` sends at once and hands back the reply slot: the same call as
            # ``{conn}.{RPC_ATTR[program]}.{info.name}(...)`` without its coroutine frame
            built = f"{args_cls}({arguments})" if args_cls is not None else "None"
            return f"{conn}.start({modname}.PROCEDURES[{const}], {built})"
        calls = getattr(module, f"{program.capitalize()}Calls")
        sig = inspect.signature(getattr(calls, info.name))
        wire = [(p.name, plain_hint(str(p.annotation))) for p in sig.parameters.values()
                if p.name not in ("self", "call_timeout")]
        ret_fields = [(f.name, plain_hint(str(f.type))) for f in dataclasses.fields(info.ret)] \
            if info.ret else []
        ret_names = [f for f, _ in ret_fields]
        notes = " ".join(entry["notes"])

        params: list[str] = []
        call_args: list[str] = []
        if cls != "Connection":
            own, own_type = wire[0]
            if own_type == "str" and cls == "NodeDevice":
                call_args.append("self._ref.name")
            else:
                assert own_type in HANDLES and HANDLES[own_type] == cls, (name, wire)
                call_args.append("self._ref")
            wire = wire[1:]
        wire_names = [w for w, _ in wire]
        # the library allocates the parameters (``virTypedParameterPtr *params``): one call
        allocating = self.api.get(name, (None, "", {}))[2].get("params") == \
            "virTypedParameterPtr *"
        dance = "nparams" in wire_names and "params" in ret_names and not allocating
        learn_count = dance and "nparams" in ret_names
        has_flags = bool(wire) and wire[-1][0] == "flags"
        string_okay = "VIR_TYPED_PARAM_STRING_OKAY into flags" in notes and has_flags
        typed_setter = None
        for wname, wtype in wire:
            pname = param_name(wname)
            if wname == "need_results":
                call_args.append("1")
                rules.append("need-results")
                continue
            if wname == "nparams" and dance:
                call_args.append("nparams")
                continue
            if wname == "nparams" and allocating:
                call_args.append("0")
                rules.append("allocating")
                continue
            if wname == "flags" and wname == wire[-1][0]:
                params.append("flags: int = 0")
                call_args.append("flags")
                continue
            if wtype in HANDLES:
                params.append(f"{pname}: {self.hint(wtype, program)}")
                call_args.append(f"{pname}._ref")
                rules.append("handle-args")
                continue
            if wtype == "list[TypedParam]":
                params.append(f"{pname}: dict[str, Any]")
                call_args.append(f"_params_{pname}")
                typed_setter = pname
                continue
            if wname == "uuid" and name.endswith("UUIDString"):
                params.append(f"{pname}: str | _uuid.UUID")
                call_args.append(f"uuid_bytes({pname})")
                rules.append("uuid-string")
                continue
            params.append(f"{pname}: {self.hint(wtype, program)}")
            call_args.append(pname)

        body: list[str] = []
        if typed_setter is not None:
            getter = getters.get((cls, re.sub(r"^(\w*?)Set", r"\1Get", name)))
            if getter is not None and getter[0] != name:
                gname, gmeth = getter
                gentry_params = self._getter_params(gname, functions)
                if gentry_params is not None and set(gentry_params) <= \
                        {p.split(":")[0] for p in params}:
                    args = ", ".join(gentry_params)
                    body += [
                        "try:",
                        f"    _types = await self._typed_param_types_{gmeth}({args})",
                        "except LibvirtError:",
                        "    _types = {}",
                        f"_params_{typed_setter} = from_dict({typed_setter}, _types)"]
                    rules.append("setter-types")
                    self.private_getters.add((cls, gname))
            if "setter-types" not in rules:
                body.append(self._typed_params_in(name, typed_setter, rules))
            rules.append("typed-params-in")
        if string_okay:
            body.append("flags |= VIR_TYPED_PARAM_STRING_OKAY  # rule string-okay")
            rules.append("string-okay")
        if dance and not learn_count:
            limit = self._params_limit(info)
            body.append(f"nparams = {limit}  # rule nparams-max")
            rules.append("nparams-max")
        if learn_count:
            first = ", ".join("0" if a == "nparams" else a for a in call_args)
            body += [f"nparams = (await {call(first)}).nparams  # rule nparams-dance",
                     "if not nparams:",
                     "    return []" if "ncpus" in wire_names else "    return {}"]
            rules.append("nparams-dance")
        joined = ", ".join(call_args)
        result_hint = "None"
        if not ret_fields:
            body.append(f"await {call(joined)}")
            if name in ID_RESETS:
                body.append("self._no_id()  # rule no-id")
                rules.append("no-id")
        else:
            body.append(f"ret = await {call(joined)}")
            if "reply's own `ret` field" in notes and "ret" in ret_names:
                body += ["if ret.ret == -1:  # rule in-band",
                         f"    raise LibvirtError(\"{name}: the daemon's reply reports failure "
                         f"(-1)\")"]
                rules.append("in-band")
            value, result_hint = self.convert(name, meth, ret_fields, program, info, dance,
                                              wire_names, rules)
            body.append(f"return {value}")
        if twin:
            body[-1] = "return _typed_param_types(ret.params)"
            result_hint = "dict[str, int]"
        if name in ("virConnectIsSecure", "virConnectIsEncrypted"):
            which = "secure" if name == "virConnectIsSecure" else "encrypted"
            body[-1] = f"return bool(ret.secure) and _transport_is_{which}(self)"
            result_hint = "bool"
            rules.append("transport-secure")

        doc = self.api.get(name, (None, "", {}))[1] or name
        doc = doc.replace("\\", "\\\\").replace('"""', "'''")
        doc_text = f"{doc} ({name})"
        if twin:
            doc_text = f"The field types ``{public_name}`` reports (for its setter)."
        if result_hint.startswith(("remote.", "qemu.", "lxc.")) and len(ret_fields) > 1:
            doc_text += f"; returns the reply ({result_hint.split('.', 1)[1]}) as is"
        sig_line = f"    async def {meth}(self{''.join(', ' + p for p in params)}) -> " \
                   f"{result_hint}:"
        if len(sig_line) <= 99:
            lines = [sig_line]
        else:
            lines = [f"    async def {meth}("]
            lines += textwrap.wrap(", ".join(["self"] + params) + ",", 92,
                                   initial_indent=" " * 12, subsequent_indent=" " * 12,
                                   break_long_words=False, break_on_hyphens=False)
            lines.append(f"    ) -> {result_hint}:")
        wrapped = textwrap.wrap(doc_text, 88)
        if len(wrapped) == 1:
            lines.append(f'        """{wrapped[0]}"""')
        else:
            lines.append(f'        """{wrapped[0]}')
            lines += [f"        {w}" for w in wrapped[1:]]
            lines.append('        """')
        if rules:
            lines.append(f"        # rules: {', '.join(dict.fromkeys(rules))}")
        lines += [f"        {b}" if b else "" for b in body]
        return Method(name, cls, meth, lines, rules)

    def convert(self, name: str, meth: str, ret_fields: list[tuple[str, str]], program: str,
                info: Any, dance: bool, wire_names: list[str],
                rules: list[str]) -> tuple[str, str]:
        """(expression, hint) of the value a method returns."""
        fields = [f for f, _ in ret_fields]
        if dance or fields == ["params"] or (fields == ["params", "nparams"]):
            if "ncpus" in wire_names:
                rules.append("per-cpu")
                return ("[to_dict(ret.params[i:i + ret.nparams]) for i in "
                        "range(0, len(ret.params), ret.nparams or 1)]",
                        "list[dict[str, Any]]")
            ptype = dict(ret_fields)["params"]
            if ptype == "list[TypedParam]":
                rules.append("typed-params-out")
                return "to_dict(ret.params)", "dict[str, Any]"
            rules.append("stats-dict")
            return "{p.field: p.value for p in ret.params}", "dict[str, int]"
        if len(fields) == 2 and fields[1] == "ret" and dict(ret_fields)[fields[0]] \
                .startswith("list["):
            rules.append("counted-list")
            fields, ret_fields = fields[:1], ret_fields[:1]
        if len(fields) == 1:
            field, ftype = ret_fields[0]
            expr = f"ret.{field}"
            if ftype in HANDLES:
                rules.append("handles-out")
                handle = HANDLES[ftype]
                self.handles.add(handle)
                conn = "self" if self.current_cls == "Connection" else "self._conn"
                return f"_{handle}({conn}, {expr})", handle
            m = re.fullmatch(r"list\[(\w+)\]", ftype)
            if m and m.group(1) in HANDLES:
                rules.append("handles-out")
                handle = HANDLES[m.group(1)]
                self.handles.add(handle)
                conn = "self" if self.current_cls == "Connection" else "self._conn"
                return f"[_{handle}({conn}, ref) for ref in {expr}]", f"list[{handle}]"
            if ftype == "list[TypedParam]":
                rules.append("typed-params-out")
                return f"to_dict({expr})", "dict[str, Any]"
            if ftype == "int" and (re.match(r"(is|has)_", meth) or field == "autostart"):
                rules.append("bool")
                return f"bool({expr})", "bool"
            return expr, self.hint(ftype, program)
        module = self.modules[program].__name__.rsplit(".", 1)[-1]
        self.imports.add(module)
        return "ret", f"{module}.{info.ret.__name__}"

    def _params_limit(self, info: Any) -> str:
        """The protocol's limit on the reply's params array (its decoder checks it)."""
        from aiovirt.protocol import remote
        source = inspect.getsource(getattr(remote, f"_dec_{info.ret.__name__}"))
        m = re.search(r"> (REMOTE_\w+_MAX)\b", source) or re.search(r"> (\d+)", source)
        assert m, info.ret.__name__
        return f"remote.{m.group(1)}" if m.group(1).startswith("REMOTE_") else m.group(1)

    @staticmethod
    def _typed_params_in(name: str, arg: str, rules: list[str]) -> str:
        """The line encoding a setter's typed parameters: by libvirt's declared types when
        ``PARAM_TYPES`` has them, else guessed."""
        if name not in PARAM_TYPES:
            return f"_params_{arg} = from_dict({arg})"
        rules.append("declared-types")
        return f"_params_{arg} = from_dict({arg}, PARAM_TYPES[{name!r}])"

    def _getter_params(self, getter: str, functions: dict[str, dict[str, Any]]
                       ) -> list[str] | None:
        return self.getter_params.get(getter)


# -- the module --------------------------------------------------------------------------------
HEADER = '''\
# Generated by `{command}` (rpc/objects.py) from libvirt {version}'s API map
# (rpc/libvirt_api_map.json) and API descriptions.  Do not edit: change rpc/objects.py and
# regenerate.
"""The object API's generated methods: one per public libvirt function that reaches the daemon.

Each ``*Generated`` class is mixed into its handle class (``Domain``, ``Network``...;
``ConnectionGenerated`` into ``Connection``); a method written by hand in the handle class
has priority over the generated one of the same name.  Methods return the reply's single
field converted (handles, dicts for typed parameters, bool for ``is_*``/``has_*``), or the
reply dataclass as is when it has several fields.  Rules applied (the ``# rules:`` comment
in each method names its own):

{rules}

Not generated (public functions of the "remote" category):

{skipped}
"""

from __future__ import annotations

import uuid as _uuid
from typing import TYPE_CHECKING, Any

from ..errors import LibvirtError
from ..protocol import {protocols}
from ..protocol.remote import TypedParam
from .handle import ApiBase, ApiConnection, uuid_bytes
from .typedparams import PARAM_TYPES, from_dict, to_dict

if TYPE_CHECKING:
{type_imports}

__all__ = {all!r}

#: libvirt's VIR_TYPED_PARAM_STRING_OKAY: the caller accepts string typed parameters.
VIR_TYPED_PARAM_STRING_OKAY = {string_okay}

# transports on which libvirt's remote driver sets priv->is_secure (tcp: only with SASL,
# which aiovirt does not negotiate) and those virNetClientIsEncrypted counts (TLS; SASL)
_SECURE_TRANSPORTS = frozenset({{"unix", "tls", "ssh", "libssh", "libssh2", "ext"}})
_ENCRYPTED_TRANSPORTS = frozenset({{"tls"}})


def _transport(conn: Any) -> str:
    uri = getattr(conn, "uri", None)
    return str(getattr(uri, "transport", "unix"))


def _transport_is_secure(conn: Any) -> bool:
    return _transport(conn) in _SECURE_TRANSPORTS


def _transport_is_encrypted(conn: Any) -> bool:
    return _transport(conn) in _ENCRYPTED_TRANSPORTS


def _typed_param_types(params: list[TypedParam]) -> dict[str, int]:
    return {{p.field: p.value.type for p in params}}


{handle_factories}


class _HandleGenerated:
    """What generated handle methods use: the connection and the wire reference."""

    __slots__ = ()
    if TYPE_CHECKING:
        _conn: ApiConnection
        _ref: Any

        def _no_id(self) -> None: ...
'''


def render(data: dict[str, Any], xml_dir: Path = apimap.API_XML_DIR) -> str:
    api = load_api_xml(xml_dir)
    gen = _Gen(data, api)
    gen.private_getters = set()  # type: ignore[attr-defined]
    functions = data["functions"]
    planned: list[tuple[str, dict[str, Any], tuple[str, str, str, tuple[str, ...]], str]] = []
    skipped: list[tuple[str, str]] = []
    for name in sorted(functions):
        entry = functions[name]
        if entry["category"] != "remote":
            continue
        proc = main_procedure(name, entry["procedures"])
        info = gen.procedure(proc)[2] if proc else None
        reason = skip_reason(name, entry, proc, info)
        first = api.get(name, (None, "", {}))[0]
        if reason is None and first not in CLASSES:
            reason = f"its first argument ({first}) is no handle class"
        if reason is not None:
            skipped.append((name, reason))
            continue
        planned.append((name, entry, CLASSES[first], proc))  # type: ignore[index]

    # typed-parameter getters, by (class, function): their non-flags parameters
    getters: dict[tuple[str, str], tuple[str, str]] = {}
    gen.getter_params = {}  # type: ignore[attr-defined]
    for name, entry, cls_info, proc in planned:
        info = gen.procedure(proc)[2]
        if info.ret is None or "params" not in {f.name for f in dataclasses.fields(info.ret)}:
            continue
        if info.ret and dict((f.name, str(f.type)) for f in dataclasses.fields(info.ret)
                             )["params"] != "list[TypedParam]":
            continue
        meth = method_name(name, cls_info[3])
        getters[(cls_info[1], name)] = (name, meth)
        wire = [f.name for f in dataclasses.fields(info.args)] if info.args else []
        if cls_info[1] != "Connection":
            wire = wire[1:]
        gen.getter_params[name] = [param_name(w) for w in wire  # type: ignore[attr-defined]
                                   if w not in ("nparams",)]

    methods: list[Method] = []
    for name, entry, cls_info, proc in planned:
        gen.current_cls = cls_info[1]  # type: ignore[attr-defined]
        methods.append(gen.method(name, entry, cls_info, proc, functions, getters))

    # the private "learn the types" twins of getters that setters use
    private: list[Method] = []
    for cls, gname in sorted(gen.private_getters):  # type: ignore[attr-defined]
        for name, entry, cls_info, proc in planned:
            if name == gname:
                gen.current_cls = cls_info[1]  # type: ignore[attr-defined]
                private.append(gen.method(name, entry, cls_info, proc, functions, getters,
                                          twin=True))

    by_class: dict[str, list[Method]] = {}
    for m in methods + private:
        by_class.setdefault(m.cls, []).append(m)
    seen: dict[tuple[str, str], str] = {}
    for m in methods:
        key = (m.cls, m.name)
        assert key not in seen, f"{m.function} and {seen[key]} both make {m.cls}.{m.name}"
        seen[key] = m.function

    order = [v for v in CLASSES.values()]
    out = []
    all_names = []
    for mixin, cls, _module, _prefixes in order:
        all_names.append(mixin)
        members = sorted(by_class.get(cls, []), key=lambda m: m.name)
        base = "ApiBase" if cls == "Connection" else "_HandleGenerated"
        count = len([m for m in members if not m.name.startswith("_")])
        doc = f"Generated methods of ``{cls}`` ({count} libvirt functions)."
        out += ["", "", f"class {mixin}({base}):", f'    """{doc}"""', "", "    __slots__ = ()"]
        for m in members:
            out.append("")
            out += m.lines

    handles = sorted(set(HANDLES.values()))
    factories = []
    for handle in handles:
        module = HANDLE_MODULE[handle]
        # the first call imports the class and puts it in the factory's place, so later
        # calls make handles directly (an import statement per handle costs ~1.5 us)
        factories += ["", "", f"def _{handle}(conn: Any, ref: Any) -> {handle}:",
                      f"    global _{handle}",
                      f"    from .{module} import {handle}",
                      "", f"    _{handle} = {handle}  # type: ignore[assignment, misc]",
                      f"    return {handle}(conn, ref)"]
    type_imports = [f"    from .{HANDLE_MODULE[h]} import {h}" for h in handles]
    rules_text = "\n".join(textwrap.fill(f"{key}: {text}", 92, initial_indent="* ",
                                         subsequent_indent="  ")
                           for key, text in RULES.items())
    groups: dict[str, list[str]] = {}
    for name, reason in skipped:
        groups.setdefault(reason, []).append(name)
    skipped_text = "\n".join(textwrap.fill(f"{', '.join(names)}: {reason}", 92,
                                           initial_indent="* ", subsequent_indent="  ",
                                           break_on_hyphens=False)
                             for reason, names in groups.items())
    header = HEADER.format(command=COMMAND, version=data.get("libvirt_version", "unknown"),
                           rules=rules_text, skipped=skipped_text,
                           protocols=", ".join(sorted(gen.imports | {"remote"})),
                           type_imports="\n".join(type_imports), all=all_names,
                           string_okay=VIR_TYPED_PARAM_STRING_OKAY,
                           handle_factories="\n".join(factories).strip("\n"))
    text = header + "\n".join(out) + "\n"
    return re.sub(r"\n{3,}", "\n\n\n", text)


def write(data: dict[str, Any], root: Path = apimap.ROOT,
          xml_dir: Path = apimap.API_XML_DIR) -> list[Path]:
    target = Path(root) / OUT_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(data, xml_dir))
    return [target]
