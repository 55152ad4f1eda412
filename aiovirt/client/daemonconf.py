"""Read libvirt daemon configuration files (``libvirtd.conf``, ``virtqemud.conf``) as the
daemon does.

A faithful subset of libvirt's ``virconf.c`` (``NAME = VALUE`` statements separated by line
ends or ``;``, ``#`` comments, numbers, ``'`` / ``"`` / ``\"\"\"`` strings, lists): the
first assignment of a name is the one libvirt uses.  Pure, no I/O.
"""

from __future__ import annotations

__all__ = ["ConfSyntaxError", "conf_entries", "conf_uint"]

ConfValue = int | str | list["ConfValue"]
_BLANK = " \t"
_EOL = "\r\n"


class ConfSyntaxError(ValueError):
    """The text is not a valid libvirt config file (the daemon would refuse it too)."""


class _Reader:
    """A cursor over the text, with the few scanning steps virconf.c has."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    @property
    def cur(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.cur and self.cur in chars:
            self.pos += 1

    def error(self, what: str) -> ConfSyntaxError:
        line = self.text.count("\n", 0, self.pos) + 1
        return ConfSyntaxError(f"line {line}: {what}")

    def until(self, stop: str) -> str:
        start = self.pos
        while self.cur and self.cur not in stop:
            self.pos += 1
        return self.text[start:self.pos]


def _value(r: _Reader) -> tuple[ConfValue, bool]:
    """One value and whether it is a signed (``-``) number, which is no uint."""
    r.skip(_BLANK)
    c = r.cur
    if not c:
        raise r.error("expecting a value")
    if r.text.startswith('"""', r.pos) and r.pos + 6 < len(r.text):
        end = r.text.find('"""', r.pos + 3)
        if end < 0:
            raise r.error("unterminated string")
        text, r.pos = r.text[r.pos + 3:end], end + 3
        return text, False
    if c in "'\"":
        r.pos += 1
        text = r.until(c + _EOL)
        if r.cur != c:
            raise r.error("unterminated string")
        r.pos += 1
        return text, False
    if c == "[":
        r.pos += 1
        items: list[ConfValue] = []
        r.skip(_BLANK + _EOL)
        while r.cur and r.cur != "]":
            if items:
                if r.cur != ",":
                    raise r.error("expecting a separator in list")
                r.pos += 1
                r.skip(_BLANK + _EOL)
                if r.cur == "]":
                    break
            items.append(_value(r)[0])
            r.skip(_BLANK + _EOL)
        if r.cur != "]":
            raise r.error("list is not closed with ]")
        r.pos += 1
        return items, False
    if c.isdigit() or c in "+-":
        r.pos += 1 if c in "+-" else 0
        digits = _digits(r)
        if not digits:
            raise r.error("unterminated number")
        return (-int(digits) if c == "-" else int(digits)), c == "-"
    raise r.error("expecting a value")


def _digits(r: _Reader) -> str:
    start = r.pos
    while r.cur and "0" <= r.cur <= "9":
        r.pos += 1
    return r.text[start:r.pos]


def conf_entries(text: str) -> list[tuple[str, ConfValue, bool]]:
    """Every ``(name, value, signed)`` statement of a config file, in order; raises
    ``ConfSyntaxError`` where libvirt's parser would fail."""
    r = _Reader(text)
    entries: list[tuple[str, ConfValue, bool]] = []
    while True:
        r.skip(_BLANK + _EOL)
        if not r.cur:
            return entries
        if r.cur == "#":
            r.until(_EOL)
            continue
        if not (r.cur.isascii() and r.cur.isalpha()):
            raise r.error("expecting a name")
        start = r.pos
        while r.cur and r.cur.isascii() and (r.cur.isalnum() or r.cur == "_"):
            r.pos += 1
        name = r.text[start:r.pos]
        r.skip(_BLANK)
        if r.cur != "=":
            raise r.error("expecting an assignment")
        r.pos += 1
        value, signed = _value(r)
        entries.append((name, value, signed))
        r.skip(_BLANK)
        if r.cur == "#":
            r.until(_EOL)
        if r.cur == ";":   # the separator: a line end or ';'
            r.pos += 1
        elif r.cur and r.cur not in _EOL:
            raise r.error("expecting a separator")


def conf_uint(text: str, name: str, default: int) -> int:
    """The unsigned int setting ``name`` as ``virConfGetValueUInt`` reads it: the first
    assignment, ``default`` when absent; ``ConfSyntaxError`` when the daemon would reject it."""
    for key, value, signed in conf_entries(text):
        if key != name:
            continue
        if not isinstance(value, int) or signed or value > 0xFFFFFFFF:
            raise ConfSyntaxError(f"{name}: expected an unsigned integer, got {value!r}")
        return value
    return default
