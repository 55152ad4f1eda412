"""Composition: complete, valid domain XML from a partial one and named policy *profiles*.

    from aiovirt.compose import compose
    result = compose(partial_xml, ["virtio-linux", "guest-agent", "q35-hotplug"],
                     params={"count": "8"}, domcaps=domcaps_xml)
    result.xml          # the complete domain XML
    print(result.explain())   # which profile@version changed what, old and new values

Everything here is pure: no connection, no daemon.  Profiles come from a ``Library`` (the
shipped ones, /etc/aiovirt/profiles, the user's, and any the application adds).
"""

from .apply import Change
from .composer import NS, AppliedProfile, Composition, Upgrade, compose
from .errors import (ComposeError, InvalidResult, ParameterError, ProfileConflict,
                     ProfileSyntaxError, UnknownProfile, XMLInputError)
from .library import Library
from .profile import Param, Profile, ProfileRef, parse_profiles

__all__ = [
    "AppliedProfile", "Change", "ComposeError", "Composition", "InvalidResult", "Library",
    "NS", "Param", "ParameterError", "Profile", "ProfileConflict", "ProfileRef",
    "ProfileSyntaxError", "UnknownProfile", "Upgrade", "XMLInputError", "compose",
    "parse_profiles",
]
