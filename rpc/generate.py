"""Generate aiovirt's protocol modules from libvirt's ``.x`` files.

For each program (virnet, keepalive, remote, qemu, lxc, admin) this writes one module holding its
constants, enums, dataclasses, XDR codecs and procedure table, and for call programs a class of
typed async methods (``conn.rpc``).  Codecs are straight-line Python over ``struct``: runs of
fixed-size fields are packed and unpacked by one precompiled ``struct.Struct``, so nothing on the
hot path dispatches through generic machinery.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path

from .xdr_parser import (Array, Declaration, Named, Optional, Primitive, Specification,
                         TypeSpec, header_constants)

# (module, source file under the libvirt tree, struct-name prefix, procedure-enum, program const)
PROGRAMS = [
    ("virnet", "src/rpc/virnetprotocol.x", None, None, None),
    ("keepalive", "src/rpc/virkeepaliveprotocol.x", "keepalive_", "keepalive_procedure",
     "KEEPALIVE_PROGRAM"),
    ("remote", "src/remote/remote_protocol.x", "remote_", "remote_procedure", "REMOTE_PROGRAM"),
    ("qemu", "src/remote/qemu_protocol.x", "qemu_", "qemu_procedure", "QEMU_PROGRAM"),
    ("lxc", "src/remote/lxc_protocol.x", "lxc_", "lxc_procedure", "LXC_PROGRAM"),
    ("admin", "src/admin/admin_protocol.x", "admin_", "admin_procedure", "ADMIN_PROGRAM"),
]

COMMAND = "python -m rpc LIBVIRT_SOURCE_TREE"

# struct format letter and size of each fixed-size scalar
_SCALAR_FORMAT = {
    "int": ("i", 4), "uint": ("I", 4), "hyper": ("q", 8), "uhyper": ("Q", 8),
    "float": ("f", 4), "double": ("d", 8), "char": ("i", 4), "uchar": ("I", 4),
    "short": ("i", 4), "ushort": ("I", 4),
}
_PY_SCALAR = {"float": "float", "double": "float", "bool": "bool"}
# integer fields are annotated with their range (aiovirt.protocol.xdr), for error messages
_INT_ALIAS = {"i": "Int32", "I": "UInt32", "q": "Int64", "Q": "UInt64"}


def class_name(xdr_name: str) -> str:
    """``remote_nonnull_domain`` -> ``NonnullDomain``; ``virNetMessageError`` -> ``MessageError``."""
    for prefix in ("remote_", "virNet"):
        if xdr_name.startswith(prefix):
            xdr_name = xdr_name[len(prefix):]
            break
    return "".join(part[:1].upper() + part[1:] for part in xdr_name.split("_") if part)


def field_name(name: str) -> str:
    return name + "_" if keyword.iskeyword(name) else name


def record(name: str, doc: str, fields: list[tuple[str, str]]) -> list[str]:
    """A wire record class written out in full (slots, annotations, ``__init__``) on the
    ``Record`` base: importing it runs no code generation, unlike ``@dataclass``."""
    out = ["", "", f"class {name}(Record):", f'    """{doc}"""', "",
           f"    __slots__ = {tuple(field for field, _ in fields)!r}"]
    if not fields:
        return out
    out += [f"    {field}: {kind}" for field, kind in fields]
    params = ", ".join(f"{field}: {kind}" for field, kind in fields)
    out += ["", f"    def __init__(self, {params}) -> None:"]
    out += [f"        self.{field} = {field}" for field, _ in fields]
    return out


def _annotations(comment: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in re.findall(r"@(\w+):\s*([^\n*]*)", comment):
        found.setdefault(key, []).append(value.strip())
    return found


@dataclass
class _Emitter:
    """Writes the codec functions for one module, tracking helper Structs and temporaries."""

    spec: Specification
    local: set[str]                  # names defined in this module
    imports: dict[str, set[str]]     # module -> names imported from sibling modules
    owner: dict[str, str]            # XDR name -> module that defines it
    structs: dict[str, str] = field(default_factory=dict)  # format -> helper name
    tables: list[str] = field(default_factory=list)        # module-level dispatch tables
    counter: int = 0

    # -- helpers ---------------------------------------------------------------------------
    def struct_helper(self, fmt: str) -> str:
        if fmt not in self.structs:
            self.structs[fmt] = f"_S{len(self.structs)}"
        return self.structs[fmt]

    def temp(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def ref(self, xdr_name: str, prefix: str = "") -> str:
        """Name of a class or codec, importing it from the module that defines it."""
        name = prefix + class_name(xdr_name)
        module = self.owner[xdr_name]
        if xdr_name not in self.local:
            self.imports.setdefault(module, set()).add(name)
        return name

    def resolve(self, type_: TypeSpec) -> TypeSpec:
        """Follow typedefs down to a primitive, array, optional, struct, union or enum."""
        while isinstance(type_, Named) and type_.name in self.spec.typedefs:
            type_ = self.spec.typedefs[type_.name].type
        return type_

    def fixed(self, type_: TypeSpec) -> tuple[str, int] | None:
        """struct format and size when ``type_`` is a fusable fixed-size scalar or opaque."""
        type_ = self.resolve(type_)
        if isinstance(type_, Primitive) and type_.name in _SCALAR_FORMAT:
            return _SCALAR_FORMAT[type_.name]
        if isinstance(type_, Named) and type_.name in self.spec.enums:
            return ("i", 4)
        if isinstance(type_, Array) and type_.element == "opaque" and type_.fixed:
            size = type_.limit or 0
            pad = -size & 3
            return (f"{size}s" + ("x" * pad if pad else ""), size + pad)
        return None

    def py_type(self, type_: TypeSpec | str) -> str:
        type_ = self.resolve(type_) if not isinstance(type_, str) else type_
        if isinstance(type_, Primitive):
            if type_.name in _PY_SCALAR:
                return _PY_SCALAR[type_.name]
            return _INT_ALIAS[_SCALAR_FORMAT[type_.name][0]]
        if isinstance(type_, Optional):
            return f"{self.py_type(type_.element)} | None"
        if isinstance(type_, Array):
            if type_.element == "string":
                return "str"
            if type_.element == "opaque" or self.is_char(type_.element):
                return "bytes"
            return f"list[{self.py_type(type_.element)}]"
        if isinstance(type_, Named):
            if type_.name in self.spec.enums:
                return "Int32"
            return self.ref(type_.name)
        raise TypeError(type_)

    def is_char(self, type_: TypeSpec | str) -> bool:
        if isinstance(type_, str):
            return False
        type_ = self.resolve(type_)
        return isinstance(type_, Primitive) and type_.name in ("char", "uchar")

    # -- encoding --------------------------------------------------------------------------
    def encode(self, type_: TypeSpec | str, expr: str, where: str, out: list[str],
               indent: str) -> None:
        """Lines appending the XDR form of ``expr`` to the bytearray ``b``."""
        type_ = self.resolve(type_) if not isinstance(type_, str) else type_
        fixed = self.fixed(type_) if not isinstance(type_, str) else None
        if fixed is not None:
            fmt, _ = fixed
            if fmt[0].isdigit():  # fixed opaque: struct pads silently, so check the length
                size = int(fmt.rstrip("x")[:-1])
                out.append(f"{indent}if len({expr}) != {size}: "
                           f"raise XdrError('{where}: needs exactly {size} bytes')")
            out.append(f"{indent}b += {self.struct_helper('>' + fmt)}.pack({expr})")
        elif isinstance(type_, Primitive) and type_.name == "bool":
            out.append(f"{indent}b += _TRUE if {expr} else _FALSE")
        elif isinstance(type_, Optional):
            tmp = self.temp()
            out.append(f"{indent}{tmp} = {expr}")
            out.append(f"{indent}if {tmp} is None:")
            out.append(f"{indent}    b += _FALSE")
            out.append(f"{indent}else:")
            out.append(f"{indent}    b += _TRUE")
            self.encode(type_.element, tmp, where, out, indent + "    ")
        elif isinstance(type_, Array):
            self.encode_array(type_, expr, where, out, indent)
        elif isinstance(type_, Named):
            codec = self.ref(type_.name, "_enc_")
            out.append(f"{indent}{codec}(b, {expr})")
        else:
            raise TypeError(type_)

    def encode_array(self, type_: Array, expr: str, where: str, out: list[str],
                     indent: str) -> None:
        tmp, count = self.temp(), self.temp()
        if type_.element == "string":
            # libvirt's strings are C strings: a NUL would silently end one on the daemon
            out.append(f"{indent}{tmp} = {expr}.encode('utf-8', 'surrogateescape')")
            out.append(f"{indent}if b'\\0' in {tmp}: raise XdrError("
                       f"'{where}: contains a NUL character (libvirt strings end at one)')")
        else:
            out.append(f"{indent}{tmp} = {expr}")
        out.append(f"{indent}{count} = len({tmp})")
        limit = type_.limit
        if type_.fixed:
            out.append(f"{indent}if {count} != {limit}: "
                       f"raise XdrError(f'{where}: needs exactly {limit} items, got {{{count}}}')")
        else:
            if limit is not None:
                out.append(f"{indent}if {count} > {limit}: raise XdrError("
                           f"f'{where}: {{{count}}} {'bytes' if type_.element in ('string', 'opaque') else 'items'} exceed the limit of {limit}')")
            out.append(f"{indent}b += _U32.pack({count})")
        if type_.element in ("string", "opaque"):
            out.append(f"{indent}b += {tmp}")
            out.append(f"{indent}b += _PAD[{count} & 3]")
            return
        elem_fixed = self.fixed(type_.element)
        if self.is_char(type_.element):
            out.append(f"{indent}b += _struct.pack(f'>{{{count}}}i', "
                       f"*[(x - 256 if x > 127 else x) for x in {tmp}])")
        elif elem_fixed is not None and not elem_fixed[0][0].isdigit():
            out.append(f"{indent}b += _struct.pack(f'>{{{count}}}{elem_fixed[0]}', *{tmp})")
        else:
            item = self.temp()
            out.append(f"{indent}for {item} in {tmp}:")
            self.encode(type_.element, item, where + "[]", out, indent + "    ")

    # -- decoding --------------------------------------------------------------------------
    def decode(self, type_: TypeSpec | str, target: str, where: str, out: list[str],
               indent: str) -> None:
        """Lines reading one value at offset ``o`` of ``d`` into ``target``, advancing ``o``."""
        type_ = self.resolve(type_) if not isinstance(type_, str) else type_
        fixed = self.fixed(type_) if not isinstance(type_, str) else None
        if fixed is not None:
            fmt, size = fixed
            out.append(f"{indent}{target}, = {self.struct_helper('>' + fmt)}.unpack_from(d, o)")
            out.append(f"{indent}o += {size}")
        elif isinstance(type_, Primitive) and type_.name == "bool":
            tmp = self.temp()
            out.append(f"{indent}{tmp}, = _U32.unpack_from(d, o)")
            out.append(f"{indent}o += 4")
            out.append(f"{indent}if {tmp} > 1: raise XdrError(f'{where}: bad bool {{{tmp}}}')")
            out.append(f"{indent}{target} = {tmp} == 1")
        elif isinstance(type_, Optional):
            tmp = self.temp()
            out.append(f"{indent}{tmp}, = _U32.unpack_from(d, o)")
            out.append(f"{indent}o += 4")
            out.append(f"{indent}if {tmp} == 1:")
            self.decode(type_.element, target, where, out, indent + "    ")
            out.append(f"{indent}elif {tmp} == 0:")
            out.append(f"{indent}    {target} = None")
            out.append(f"{indent}else:")
            out.append(f"{indent}    raise XdrError(f'{where}: bad optional flag {{{tmp}}}')")
        elif isinstance(type_, Array):
            self.decode_array(type_, target, where, out, indent)
        elif isinstance(type_, Named):
            codec = self.ref(type_.name, "_dec_")
            out.append(f"{indent}{target}, o = {codec}(d, o)")
        else:
            raise TypeError(type_)

    def decode_array(self, type_: Array, target: str, where: str, out: list[str],
                     indent: str) -> None:
        if type_.fixed:
            count = str(type_.limit)
        else:
            count = self.temp()
            out.append(f"{indent}{count}, = _U32.unpack_from(d, o)")
            out.append(f"{indent}o += 4")
            if type_.limit is not None:
                out.append(f"{indent}if {count} > {type_.limit}: raise XdrError("
                           f"f'{where}: {{{count}}} {'bytes' if type_.element in ('string', 'opaque') else 'items'} exceed the limit of {type_.limit}')")
        if type_.element in ("string", "opaque"):
            end = self.temp()
            out.append(f"{indent}{end} = o + {count}")
            out.append(f"{indent}if {end} > len(d): raise XdrError('{where}: truncated')")
            if type_.element == "string":
                out.append(f"{indent}{target} = d[o:{end}].decode('utf-8', 'surrogateescape')")
            else:
                out.append(f"{indent}{target} = bytes(d[o:{end}])")
            out.append(f"{indent}o += ({count} + 3) & ~3")
            return
        elem_fixed = self.fixed(type_.element)
        if self.is_char(type_.element):
            out.append(f"{indent}{target} = bytes([x & 255 for x in "
                       f"_struct.unpack_from(f'>{{{count}}}i', d, o)])")
            out.append(f"{indent}o += 4 * {count}")
        elif elem_fixed is not None and not elem_fixed[0][0].isdigit():
            out.append(f"{indent}{target} = list(_struct.unpack_from("
                       f"f'>{{{count}}}{elem_fixed[0]}', d, o))")
            out.append(f"{indent}o += {elem_fixed[1]} * {count}")
        else:
            item, append = self.temp(), self.temp()
            out.append(f"{indent}{target}: list[Any] = []")
            out.append(f"{indent}{append} = {target}.append")
            out.append(f"{indent}for _ in range({count}):")
            self.decode(type_.element, item, where + "[]", out, indent + "    ")
            out.append(f"{indent}    {append}({item})")

    # -- definitions -----------------------------------------------------------------------
    def runs(self, fields: list[Declaration]) -> list[list[Declaration]]:
        """Split struct fields into runs: consecutive fixed-size fields share one run."""
        runs: list[list[Declaration]] = []
        for decl in fields:
            if self.fixed(decl.type) is not None and runs and self.fixed(runs[-1][0].type):
                runs[-1].append(decl)
            else:
                runs.append([decl])
        return runs

    def struct(self, xdr_name: str) -> list[str]:
        struct = self.spec.structs[xdr_name]
        name = class_name(xdr_name)
        out = record(name, f"XDR struct ``{xdr_name}``.",
                     [(field_name(decl.name), self.py_type(decl.type)) for decl in struct.fields])
        runs = self.runs(struct.fields)
        # encoder
        out += ["", "", f"def _enc_{name}(b: bytearray, v: {name}) -> None:"]
        for run in runs:
            where = f"{name}.{run[0].name}"
            if len(run) > 1:
                fmt = ">" + "".join(self.fixed(decl.type)[0] for decl in run)
                args = ", ".join(f"v.{field_name(decl.name)}" for decl in run)
                for decl in run:
                    self.check_fixed_opaque(decl, f"v.{field_name(decl.name)}",
                                            f"{name}.{decl.name}", out)
                out.append(f"    b += {self.struct_helper(fmt)}.pack({args})")
            else:
                self.encode(run[0].type, f"v.{field_name(run[0].name)}", where, out, "    ")
        if not struct.fields:
            out.append("    pass")
        # decoder
        out += ["", "", f"def _dec_{name}(d: bytes, o: int) -> tuple[{name}, int]:"]
        values: list[str] = []
        for run in runs:
            if len(run) > 1:
                fmt = ">" + "".join(self.fixed(decl.type)[0] for decl in run)
                size = sum(self.fixed(decl.type)[1] for decl in run)
                temps = [self.temp() for _ in run]
                out.append(f"    {', '.join(temps)} = {self.struct_helper(fmt)}.unpack_from(d, o)")
                out.append(f"    o += {size}")
                values += temps
            else:
                tmp = self.temp()
                self.decode(run[0].type, tmp, f"{name}.{run[0].name}", out, "    ")
                values.append(tmp)
        out.append(f"    return {name}({', '.join(values)}), o")
        return out

    def check_fixed_opaque(self, decl: Declaration, expr: str, where: str,
                           out: list[str]) -> None:
        fmt = self.fixed(decl.type)[0]
        if fmt[0].isdigit():
            size = int(fmt.rstrip("x")[:-1])
            out.append(f"    if len({expr}) != {size}: "
                       f"raise XdrError('{where}: needs exactly {size} bytes')")

    def union(self, xdr_name: str) -> list[str]:
        union = self.spec.unions[xdr_name]
        name = class_name(xdr_name)
        disc = field_name(union.discriminant.name)
        arm_types = sorted({self.py_type(decl.type) if decl.type else "None"
                            for _, decl in union.arms}
                           | ({self.py_type(union.default.type) if union.default.type else "None"}
                              if union.default else set()))
        out = record(name, f"XDR union ``{xdr_name}``: ``value`` is the arm selected by "
                           f"``{disc}``.",
                     [(disc, self.py_type(union.discriminant.type)),
                      ("value", " | ".join(arm_types))])
        # encoder
        out += ["", "", f"def _enc_{name}(b: bytearray, v: {name}) -> None:",
                f"    t = v.{disc}", "    x: Any = v.value"]
        self.encode(union.discriminant.type, "t", f"{name}.{disc}", out, "    ")
        keyword_ = "if"
        for labels, decl in union.arms:
            test = f"t == {labels[0]}" if len(labels) == 1 else f"t in {tuple(labels)!r}"
            out.append(f"    {keyword_} {test}:")
            if decl.type is None:
                out.append("        pass")
            else:
                self.encode(decl.type, "x", f"{name}.{decl.name}", out, "        ")
            keyword_ = "elif"
        out.append("    else:")
        if union.default is not None:
            if union.default.type is None:
                out.append("        pass")
            else:
                self.encode(union.default.type, "x", f"{name}.{union.default.name}", out,
                            "        ")
        else:
            out.append(f"        raise XdrError(f'{name}: no arm for {disc}={{t}}')")
        # decoder: arms of one fixed-size scalar are found by one dict lookup, not a chain
        table = {label: self.fixed(decl.type) for labels, decl in union.arms for label in labels
                 if decl.type is not None and self.fixed(decl.type) is not None
                 and not self.fixed(decl.type)[0][0].isdigit()}
        out += ["", "", f"def _dec_{name}(d: bytes, o: int) -> tuple[{name}, int]:"]
        self.decode(union.discriminant.type, "t", f"{name}.{disc}", out, "    ")
        keyword_ = "if"
        if len(table) > 2:
            helpers = ", ".join(f"{label}: {self.struct_helper('>' + fmt)}"
                                for label, (fmt, _) in table.items())
            self.tables.append(f"_ARMS_{name} = {{{helpers}}}")
            out.append(f"    s = _ARMS_{name}.get(t)")
            out.append("    if s is not None:")
            out.append("        v, = s.unpack_from(d, o)")
            out.append("        o += s.size")
            keyword_ = "elif"
        for labels, decl in union.arms:
            if len(table) > 2 and all(label in table for label in labels):
                continue
            test = f"t == {labels[0]}" if len(labels) == 1 else f"t in {tuple(labels)!r}"
            out.append(f"    {keyword_} {test}:")
            if decl.type is None:
                out.append("        v = None")
            else:
                self.decode(decl.type, "v", f"{name}.{decl.name}", out, "        ")
            keyword_ = "elif"
        out.append("    else:")
        if union.default is not None:
            if union.default.type is None:
                out.append("        v = None")
            else:
                self.decode(union.default.type, "v", f"{name}.{union.default.name}", out,
                            "        ")
        else:
            out.append(f"        raise XdrError(f'{name}: no arm for {disc}={{t}}')")
        out.append(f"    return {name}(t, v), o")
        return out


def _enum_class(xdr_name: str, members: list) -> list[str]:
    out = ["", "", f"class {class_name(xdr_name)}(IntEnum):", f'    """XDR enum ``{xdr_name}``."""', ""]
    for member in members:
        out.append(f"    {member.name} = {member.value}")
    return out


def generate(tree: Path) -> dict[str, str]:
    """Return {module file name: source} for every program, from the libvirt source ``tree``."""
    tree = Path(tree)
    external = header_constants(tree / "include" / "libvirt")
    version = _libvirt_version(tree)
    spec = Specification()
    owner: dict[str, str] = {}
    defined_in: dict[str, list[tuple[str, str]]] = {}
    from .xdr_parser import _Parser, _tokenize  # one shared namespace across files

    for module, source, *_ in PROGRAMS:
        before = len(spec.order)
        path = tree / source
        _Parser(_tokenize(path.read_text(), source), source, spec, external).parse()
        defined_in[module] = spec.order[before:]
        for _, name in defined_in[module]:
            owner[name] = module
        for enum_name in [n for k, n in defined_in[module] if k == "enum"]:
            for member in spec.enums[enum_name].members:
                owner[member.name] = module

    files: dict[str, str] = {}
    for module, source, prefix, proc_enum, program_const in PROGRAMS:
        files[f"{module}.py"] = _module(spec, module, source, prefix, proc_enum, program_const,
                                        defined_in[module], owner, version)
    return files


def _libvirt_version(tree: Path) -> str:
    meson = tree / "meson.build"
    if meson.exists():
        match = re.search(r"version:\s*'([0-9.]+)'", meson.read_text())
        if match:
            return match.group(1)
    return "unknown"


def _module(spec: Specification, module: str, source: str, prefix: str | None,
            proc_enum: str | None, program_const: str | None,
            definitions: list[tuple[str, str]], owner: dict[str, str], version: str) -> str:
    local = {name for _, name in definitions}
    imports: dict[str, set[str]] = {}
    emitter = _Emitter(spec, local, imports, owner)
    body: list[str] = []

    consts = [name for kind, name in definitions if kind == "const"]
    if consts:
        body.append("")
        for name in consts:
            value = spec.consts[name].value
            body.append(f"{name} = {hex(value) if value > 0xFFFF else value}")
    for kind, name in definitions:
        if kind == "enum":
            members = spec.enums[name].members
            body.append("")
            for member in members:
                body.append(f"{member.name} = {member.value}")
            body += _enum_class(name, members)
        elif kind == "struct":
            body += emitter.struct(name)
        elif kind == "union":
            body += emitter.union(name)

    exported = [class_name(n) for k, n in definitions if k in ("struct", "union", "enum")]
    if proc_enum is not None:
        body += _procedures(spec, emitter, module, prefix, proc_enum, program_const)
        exported += ["PROCEDURES", "PROGRAM", "VERSION"]
        if module != "keepalive":
            exported.append(f"{module.capitalize()}Calls")

    helpers = ["", ""] + [f"{name} = _struct.Struct({fmt!r})"
                          for fmt, name in emitter.structs.items()] + emitter.tables
    code = "\n".join(helpers + body)

    def used(*names: str) -> list[str]:
        return [n for n in names if re.search(rf"\b{n}\b", code)]

    header = [
        f"# Generated by `{COMMAND}` from libvirt {version}: {source}.",
        "# Do not edit: change rpc/ and regenerate.",
        f'"""Wire types and codecs of libvirt\'s ``{source.rsplit("/", 1)[-1]}``."""',
        "",
        "from __future__ import annotations",
        "",
    ] + (["import struct as _struct"] if used("_struct") else [])
    for module_name, names in (("collections.abc", used("Awaitable", "Callable")),
                               ("enum", used("IntEnum")), ("types", used("EllipsisType")),
                               ("typing", used("Any"))):
        if names:
            header.append(f"from {module_name} import {', '.join(names)}")
    shared = used("_FALSE", "_PAD", "_TRUE", "_U32", "Int32", "Int64", "ProcedureInfo", "Record",
                  "UInt32", "UInt64", "XdrError")
    header += ["", f"from .xdr import {', '.join(shared)}"]
    for other in sorted(imports):
        header.append(f"from .{other} import (")
        for name in sorted(imports[other]):
            header.append(f"    {name},")
        header.append(")")
    header.append("")
    header.append(f"__all__ = {sorted(set(exported))!r}")
    text = "\n".join(header) + "\n" + code + "\n"
    return re.sub(r"\n{3,}", "\n\n\n", text)


# Procedures that open a stream but carry no @readstream/@writestream note in the .x file
# (remote_driver.c opens their streams by hand: virNetClientStreamNew there).
_UNANNOTATED_STREAMS = {"REMOTE_PROC_DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS": "write"}


def _procedures(spec: Specification, emitter: _Emitter, module: str, prefix: str,
                proc_enum: str, program_const: str) -> list[str]:
    upper = prefix.upper() + "PROC_"
    out = ["", "", f"PROGRAM = {program_const}",
           f"VERSION = {program_const.replace('_PROGRAM', '_PROTOCOL_VERSION')}", "", "",
           "PROCEDURES: dict[int, ProcedureInfo] = {}", ""]
    calls: list[str] = []
    for member in spec.enums[proc_enum].members:
        snake = member.name[len(upper):].lower()
        notes = _annotations(member.comment)
        parts = {}
        for part in ("args", "ret", "msg"):
            xdr_name = f"{prefix}{snake}_{part}"
            parts[part] = xdr_name if xdr_name in spec.structs else None
        args, ret = parts["args"], parts["ret"] or parts["msg"]
        stream = "read" if "readstream" in notes else "write" if "writestream" in notes else None
        stream = stream or _UNANNOTATED_STREAMS.get(member.name)
        high = notes.get("priority", ["low"])[0] == "high"

        def codec(xdr: str | None, kind: str) -> str:
            return emitter.ref(xdr, kind) if xdr else "None"

        out.append(
            f"PROCEDURES[{member.value}] = ProcedureInfo({member.value}, {snake!r}, "
            f"{codec(args, '')}, {codec(ret, '')}, "
            f"{codec(args, '_enc_')}, {codec(args, '_dec_')}, "
            f"{codec(ret, '_enc_')}, {codec(ret, '_dec_')}, "
            f"high_priority={high}, stream={stream!r}, event={parts['msg'] is not None}, "
            f"program=PROGRAM)")
        if parts["msg"] is None and module != "keepalive":
            calls += _call_method(spec, emitter, member.name, member.value, snake, args, ret,
                                  high, stream)
    if module == "keepalive":
        return out
    cls = f"{module.capitalize()}Calls"
    home = {"remote": "conn.rpc", "admin": "AdminClient.rpc"}.get(module, f"conn.{module}_rpc")
    return out + [
        "", "", f"class {cls}:",
        f'    """Every {module.upper()} procedure as a typed coroutine (``{home}``).',
        "",
        "    ``call_timeout`` is one call's limit in seconds (None: none; left out: the",
        "    connection's default).  It is not named ``timeout``, which some procedures take",
        '    as an argument of their own."""',
        "",
        '    __slots__ = ("_call",)',
        "",
        "    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:",
        "        self._call = call",
    ] + calls


def _call_method(spec: Specification, emitter: _Emitter, const: str, number: int, snake: str,
                 args: str | None, ret: str | None, high: bool, stream: str | None) -> list[str]:
    params = ["self"]
    build = "None"
    if args is not None:
        fields = spec.structs[args].fields
        names = [field_name(decl.name) for decl in fields]
        # trailing 'flags' fields default to 0, as in libvirt's C API
        defaults = set()
        for decl in reversed(fields):
            if decl.name != "flags":
                break
            defaults.add(decl.name)
        for decl in fields:
            hint = emitter.py_type(decl.type)
            default = " = 0" if decl.name in defaults else ""
            params.append(f"{field_name(decl.name)}: {hint}{default}")
        build = f"{emitter.ref(args)}({', '.join(names)})"
    result = emitter.ref(ret) if ret else "None"
    doc = f"{const} ({number})" + (", high priority" if high else "") + \
        (f", opens a {stream} stream" if stream else "")
    params.append("*, call_timeout: float | None | EllipsisType = ...")
    return ["", f"    async def {snake}({', '.join(params)}) -> {result}:",
            f'        """{doc}."""',
            f"        return await self._call(PROCEDURES[{number}], {build}, call_timeout)"]


def write(tree: Path, package_dir: Path) -> list[Path]:
    """Regenerate the protocol modules under ``package_dir`` (aiovirt/protocol)."""
    written = []
    for name, text in generate(tree).items():
        target = Path(package_dir) / name
        target.write_text(text)
        written.append(target)
    return written
