"""libvirt typed parameters (``remote_typed_param``) to and from plain Python dicts."""

from __future__ import annotations

from typing import Any

from .protocol.remote import TypedParam, TypedParamValue

__all__ = ["INT", "UINT", "LLONG", "ULLONG", "DOUBLE", "BOOLEAN", "STRING", "to_dict", "from_dict"]

INT, UINT, LLONG, ULLONG, DOUBLE, BOOLEAN, STRING = 1, 2, 3, 4, 5, 6, 7


def to_dict(params: list[TypedParam]) -> dict[str, Any]:
    """``[TypedParam('state.state', (1, 5))]`` -> ``{'state.state': 5}``; booleans become bool."""
    result: dict[str, Any] = {}
    for param in params:
        value = param.value
        result[param.field] = value.value if value.type != BOOLEAN else bool(value.value)
    return result


def from_dict(values: dict[str, Any], types: dict[str, int] | None = None) -> list[TypedParam]:
    """Encode a dict as typed parameters, guessing each type unless ``types`` names it."""
    params = []
    for field, value in values.items():
        kind = (types or {}).get(field)
        if kind is None:
            if isinstance(value, bool):
                kind = BOOLEAN
            elif isinstance(value, int):
                kind = ULLONG if value >= 0 else LLONG
            elif isinstance(value, float):
                kind = DOUBLE
            elif isinstance(value, str):
                kind = STRING
            else:
                raise TypeError(f"typed parameter {field!r}: cannot encode {value!r}")
        params.append(TypedParam(field, TypedParamValue(kind, int(value) if kind == BOOLEAN
                                                        else value)))
    return params
