"""Composition: complete, valid domain XML from a partial one and named policy *profiles*.

    from aiovirt.compose import compose
    result = compose(partial_xml, ["virtio-linux", "guest-agent", "q35-hotplug"],
                     params={"count": "8"}, domcaps=domcaps_xml)
    result.xml          # the complete domain XML
    print(result.explain())   # which profile@version changed what, old and new values

Profiles act on the input's own values (``input_wins=True``: aiovirt 0.1's rules, where the
input outranks profiles below priority 99).  ``Composer`` / ``compose_many`` compose batches.

Everything here is pure: no connection, no daemon.  Profiles come from a ``Library`` (the
shipped ones, /etc/aiovirt/profiles, the user's, and any the application adds).
"""

from .apply import Change
from .composer import NS, AppliedProfile, Composer, Composition, Upgrade, compose, compose_many
from .errors import (BadProfileReference, ComposeError, InvalidResult, ParameterError,
                     ProfileConflict, ProfileSyntaxError, UnknownProfile, XMLInputError)
from .library import Library
from .profile import Param, Profile, ProfileRef, parse_profiles

__all__ = [
    "AppliedProfile", "BadProfileReference", "Change", "ComposeError", "Composer", "Composition", "InvalidResult",
    "Library",
    "NS", "Param", "ParameterError", "Profile", "ProfileConflict", "ProfileRef",
    "ProfileSyntaxError", "UnknownProfile", "Upgrade", "XMLInputError", "compose",
    "compose_many", "parse_profiles",
]
