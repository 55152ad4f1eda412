"""What composition raises: one hierarchy under ``ComposeError``, each naming what and where."""

from __future__ import annotations

from ..errors import AiovirtError, XMLInputError

__all__ = ["BadProfileReference", "ComposeError", "InvalidResult", "ParameterError",
           "ProfileConflict", "ProfileSyntaxError", "UnknownProfile", "XMLInputError"]


class ComposeError(AiovirtError):
    """Composition failed; the message says which profile, where and why."""


class ProfileSyntaxError(XMLInputError, ComposeError):
    """A profile document is malformed (``source`` and ``line`` say where)."""


class UnknownProfile(ComposeError, LookupError):
    """No profile of that name, or not in that version, in the library."""


class BadProfileReference(ComposeError, ValueError):
    """A profile named in a form that is not ``NAME`` or ``NAME@VERSION``."""


class ParameterError(ComposeError, ValueError):
    """A parameter is missing, unknown, or of the wrong type."""


class ProfileConflict(ComposeError):
    """Profiles that cannot be combined: a hard value overridden, two profiles of equal
    priority setting different values, or a declared conflict."""


class InvalidResult(ComposeError):
    """The composed domain XML does not validate against libvirt's schema; ``violations``
    lists (profile responsible or "input", path, message)."""

    def __init__(self, message: str, violations: list[tuple[str, str, str]]) -> None:
        super().__init__(message)
        self.violations = violations
