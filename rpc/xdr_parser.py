"""Parser for the XDR language (RFC 4506) as libvirt's ``.x`` protocol files use it.

It understands constants, enums, structs, discriminated unions and typedefs, keeps the
``/** ... */`` comment in front of each enum member (libvirt puts its procedure annotations
there), skips ``%`` passthrough lines, and resolves symbolic sizes and case labels to integers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Array", "Const", "Declaration", "Enum", "Named", "Optional", "ParseError", "Primitive",
    "Specification", "Struct", "TypeSpec", "Union", "parse",
]


class ParseError(Exception):
    """A ``.x`` file could not be parsed; the message names the file and line."""


# ---------------------------------------------------------------------------------------------
# Type expressions

@dataclass(frozen=True)
class Primitive:
    """A built-in XDR scalar: int, unsigned int, hyper, unsigned hyper, float, double, bool, char."""

    name: str


@dataclass(frozen=True)
class Named:
    """A reference to a typedef, struct, union or enum by name."""

    name: str


@dataclass(frozen=True)
class Array:
    """``T x[n]`` (fixed), ``T x<n>`` (variable, ``limit`` None when unbounded), or opaque/string."""

    element: TypeSpec | str  # "opaque" or "string" for byte data
    fixed: bool
    limit: int | None


@dataclass(frozen=True)
class Optional:
    """``T *x``: XDR optional data (a bool followed by the value when true)."""

    element: TypeSpec


TypeSpec = Primitive | Named | Array | Optional


@dataclass(frozen=True)
class Declaration:
    name: str | None  # None for void
    type: TypeSpec | None
    line: int = 0


@dataclass
class Const:
    name: str
    value: int
    comment: str = ""


@dataclass
class Enum:
    name: str
    members: list[Const]


@dataclass
class Struct:
    name: str
    fields: list[Declaration]


@dataclass
class Union:
    name: str
    discriminant: Declaration
    arms: list[tuple[list[int], Declaration]]
    default: Declaration | None


@dataclass
class Specification:
    """Everything one or more ``.x`` files define, in order, with names resolved."""

    consts: dict[str, Const] = field(default_factory=dict)
    enums: dict[str, Enum] = field(default_factory=dict)
    structs: dict[str, Struct] = field(default_factory=dict)
    unions: dict[str, Union] = field(default_factory=dict)
    typedefs: dict[str, Declaration] = field(default_factory=dict)
    order: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) as defined
    sources: list[str] = field(default_factory=list)

    def lookup_value(self, name: str) -> int | None:
        if name in self.consts:
            return self.consts[name].value
        return None


# ---------------------------------------------------------------------------------------------
# Lexer

_TOKEN = re.compile(
    r"""
    (?P<comment>/\*.*?\*/)
  | (?P<ws>\s+)
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|\d+))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}()\[\]<>;:,=*])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass
class _Token:
    kind: str
    text: str
    line: int
    comment: str  # the last comment seen since the previous token


def _tokenize(text: str, filename: str) -> list[_Token]:
    # '%' lines pass C text through rpcgen; they mean nothing to us.
    text = re.sub(r"(?m)^%.*$", "", text)
    tokens: list[_Token] = []
    pos, line, comment = 0, 1, ""
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ParseError(f"{filename}:{line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        value = m.group()
        if kind == "comment":
            comment = value
        elif kind != "ws":
            tokens.append(_Token(kind, value, line, comment))
            comment = ""
        line += value.count("\n")
        pos = m.end()
    return tokens


# ---------------------------------------------------------------------------------------------
# Parser

_SCALARS = {"int", "hyper", "float", "double", "bool", "char", "short"}


class _Parser:
    def __init__(self, tokens: list[_Token], filename: str, spec: Specification,
                 external: dict[str, int]):
        self.tokens = tokens
        self.pos = 0
        self.filename = filename
        self.spec = spec
        self.external = external

    # -- token helpers
    def error(self, message: str, token: _Token | None = None) -> ParseError:
        token = token or (self.tokens[self.pos] if self.pos < len(self.tokens) else None)
        line = token.line if token else (self.tokens[-1].line if self.tokens else 0)
        return ParseError(f"{self.filename}:{line}: {message}")

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> _Token:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end of file")
        self.pos += 1
        return token

    def expect(self, text: str) -> _Token:
        token = self.next()
        if token.text != text:
            raise self.error(f"expected {text!r}, found {token.text!r}", token)
        return token

    def accept(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.text == text:
            self.pos += 1
            return True
        return False

    def identifier(self) -> _Token:
        token = self.next()
        if token.kind != "ident":
            raise self.error(f"expected a name, found {token.text!r}", token)
        return token

    def value(self) -> int:
        token = self.next()
        if token.kind == "number":
            body = token.text.lstrip("-")
            if body[:2] in ("0x", "0X"):
                number = int(body, 16)
            elif len(body) > 1 and body[0] == "0":
                number = int(body, 8)
            else:
                number = int(body)
            return -number if token.text.startswith("-") else number
        if token.kind == "ident":
            found = self.spec.lookup_value(token.text)
            if found is None:
                found = self.external.get(token.text)
            if found is None:
                raise self.error(f"unknown constant {token.text!r}", token)
            return found
        raise self.error(f"expected a value, found {token.text!r}", token)

    # -- grammar
    def parse(self) -> None:
        while self.peek() is not None:
            keyword = self.identifier()
            handler = {
                "const": self.const, "enum": self.enum, "struct": self.struct,
                "union": self.union, "typedef": self.typedef,
            }.get(keyword.text)
            if handler is None:
                raise self.error(f"expected a definition, found {keyword.text!r}", keyword)
            handler()

    def define(self, kind: str, name: str, token: _Token) -> None:
        if any(name in table for table in (self.spec.consts, self.spec.enums, self.spec.structs,
                                           self.spec.unions, self.spec.typedefs)):
            raise self.error(f"{name!r} is defined twice", token)
        self.spec.order.append((kind, name))

    def const(self) -> None:
        token = self.identifier()
        self.expect("=")
        value = self.value()
        self.expect(";")
        self.define("const", token.text, token)
        self.spec.consts[token.text] = Const(token.text, value, token.comment)

    def enum(self) -> None:
        token = self.identifier()
        self.expect("{")
        members: list[Const] = []
        while True:
            member = self.identifier()
            self.expect("=")
            value = self.value()
            const = Const(member.text, value, member.comment)
            if member.text in self.spec.consts:
                raise self.error(f"{member.text!r} is defined twice", member)
            self.spec.consts[member.text] = const
            members.append(const)
            if not self.accept(","):
                break
        self.expect("}")
        self.expect(";")
        self.define("enum", token.text, token)
        self.spec.enums[token.text] = Enum(token.text, members)

    def struct(self) -> None:
        token = self.identifier()
        self.expect("{")
        fields: list[Declaration] = []
        while not self.accept("}"):
            decl = self.declaration()
            if decl.name is None:
                raise self.error("void is not allowed as a struct member")
            fields.append(decl)
            self.expect(";")
        self.expect(";")
        self.define("struct", token.text, token)
        self.spec.structs[token.text] = Struct(token.text, fields)

    def union(self) -> None:
        token = self.identifier()
        self.expect("switch")
        self.expect("(")
        discriminant = self.declaration()
        self.expect(")")
        self.expect("{")
        arms: list[tuple[list[int], Declaration]] = []
        default: Declaration | None = None
        while not self.accept("}"):
            if self.accept("default"):
                self.expect(":")
                default = self.declaration()
                self.expect(";")
                continue
            labels: list[int] = []
            while self.accept("case"):
                labels.append(self.value())
                self.expect(":")
            if not labels:
                raise self.error("expected 'case' or 'default'")
            arms.append((labels, self.declaration()))
            self.expect(";")
        self.expect(";")
        self.define("union", token.text, token)
        self.spec.unions[token.text] = Union(token.text, discriminant, arms, default)

    def typedef(self) -> None:
        decl = self.declaration()
        self.expect(";")
        if decl.name is None:
            raise self.error("typedef of void")
        self.define("typedef", decl.name, self.tokens[self.pos - 2])
        self.spec.typedefs[decl.name] = decl

    def base_type(self) -> TypeSpec | str:
        token = self.identifier()
        text = token.text
        if text == "unsigned":
            following = self.peek()
            if following is not None and following.text in ("int", "hyper", "char", "short"):
                self.pos += 1
                return Primitive({"int": "uint", "hyper": "uhyper", "char": "uchar",
                                  "short": "ushort"}[following.text])
            return Primitive("uint")
        if text in _SCALARS:
            return Primitive(text)
        if text in ("opaque", "string"):
            return text
        if text in ("struct", "enum", "union"):
            raise self.error(f"inline {text} definitions are not supported", token)
        return Named(text)

    def declaration(self) -> Declaration:
        token = self.peek()
        if token is not None and token.text == "void":
            self.pos += 1
            return Declaration(None, None, token.line)
        base = self.base_type()
        if self.accept("*"):
            name = self.identifier()
            if isinstance(base, str):
                raise self.error(f"{base} cannot be optional", name)
            return Declaration(name.text, Optional(base), name.line)
        name = self.identifier()
        if self.accept("["):
            size = self.value()
            self.expect("]")
            return Declaration(name.text, Array(base, True, size), name.line)
        if self.accept("<"):
            limit = None if self.peek() is not None and self.peek().text == ">" else self.value()
            self.expect(">")
            return Declaration(name.text, Array(base, False, limit), name.line)
        if isinstance(base, str):
            raise self.error(f"{base} needs a size in [] or <>", name)
        return Declaration(name.text, base, name.line)


def parse(paths: list[Path], external: dict[str, int] | None = None) -> Specification:
    """Parse ``.x`` files in order into one namespace (later files may use earlier names)."""
    spec = Specification()
    for path in paths:
        text = Path(path).read_text()
        parser = _Parser(_tokenize(text, str(path)), str(path), spec, external or {})
        parser.parse()
        spec.sources.append(str(path))
    _check_references(spec)
    return spec


def _check_references(spec: Specification) -> None:
    known = set(spec.enums) | set(spec.structs) | set(spec.unions) | set(spec.typedefs)

    def visit(where: str, type_: TypeSpec | str | None) -> None:
        if isinstance(type_, Named) and type_.name not in known:
            raise ParseError(f"{where}: unknown type {type_.name!r}")
        if isinstance(type_, Array | Optional):
            visit(where, type_.element)

    for struct in spec.structs.values():
        for decl in struct.fields:
            visit(f"struct {struct.name}.{decl.name}", decl.type)
    for union in spec.unions.values():
        for _, decl in union.arms:
            visit(f"union {union.name}.{decl.name}", decl.type)
    for decl in spec.typedefs.values():
        visit(f"typedef {decl.name}", decl.type)


# ---------------------------------------------------------------------------------------------
# C header constants the .x files borrow (VIR_UUID_BUFLEN, VIR_TYPED_PARAM_INT, ...)

_DEFINE = re.compile(r"^\s*#\s*define\s+(VIR_[A-Z0-9_]+)\s+(\(?[0-9 +\-()]+\)?)\s*(?:/\*.*)?$",
                     re.MULTILINE)
_ENUM_MEMBER = re.compile(r"^\s*(VIR_[A-Z0-9_]+)\s*=\s*([0-9]+)\s*,", re.MULTILINE)
_ARITHMETIC = re.compile(r"^[0-9 +\-()]+$")


def header_constants(include_dir: Path) -> dict[str, int]:
    """Integer constants from libvirt's public headers: simple ``#define``s and enum members."""
    found: dict[str, int] = {}
    for header in sorted(include_dir.glob("*.h*")):
        text = header.read_text(errors="replace")
        for name, value in _ENUM_MEMBER.findall(text):
            found.setdefault(name, int(value))
        for name, expr in _DEFINE.findall(text):
            if _ARITHMETIC.match(expr):
                # Only digits, + - and parentheses reach eval: no names, calls or attributes.
                found.setdefault(name, int(eval(expr, {"__builtins__": {}}, {})))
    return found
