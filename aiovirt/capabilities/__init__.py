"""Capability sets: what at least K of N hosts can do, as one host's caps and domcaps.

    from aiovirt.capabilities import HostCaps, merge

    fleet = merge([HostCaps.parse("h1", caps1, domcaps1),
                   HostCaps.parse("h2", caps2, domcaps2)], min_hosts=2)
    compose(domain, ["kvm-base"], caps=fleet)        # conditions see the fleet
    print(fleet.report())                            # who lacks what

Pure (lxml only): ``merge`` chooses the host-model CPU offline (``cpu``); ``live.baseline``
takes a connection and asks libvirt for its own baseline instead.
"""

from .capset import CapabilitySet, merge
from .cpu import CpuChoice, HostModel, cpu_definition, host_model
from .errors import CapabilityError
from .hosts import HostCaps
from .tree import Gap

__all__ = ["CapabilityError", "CapabilitySet", "CpuChoice", "Gap", "HostCaps", "HostModel",
           "cpu_definition", "host_model", "merge"]
