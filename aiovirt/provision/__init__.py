"""Provisioning: compose, place, define and start many guests on one host or a fleet.

    from aiovirt.provision import GuestSpec, provision

    spec = GuestSpec("<domain><name>web</name></domain>", ["kvm-base", "virtio-linux"],
                     count=20, name="web-{n:02d}")
    report = await provision(["qemu+tcp://h1/system", "qemu+tcp://h2/system"], spec)
    print(report.counts())           # {'started': 20}

``Plan`` decides (placement, queues, host loss, cancellation, outcomes) without I/O;
``Provisioning`` carries its actions out.  Every guest ends with an outcome (started, defined, failed with the reason, skipped,
cancelled) and says whether it exists; ``teardown`` removes what a run made.
"""

from .placement import POLICIES, Capacity, choose
from .plan import Plan
from .report import GuestResult, HostSummary, Outcome, Progress, Report, Stage
from .run import NAMESPACE, ON_EXISTING, Provisioning, provision, undefine
from .spec import GuestSpec, ProvisionError, SpecError
from .teardown import Removal, TeardownReport, teardown

__all__ = ["NAMESPACE", "ON_EXISTING", "POLICIES", "Capacity", "GuestResult", "GuestSpec",
           "HostSummary", "Outcome", "Plan", "Progress", "Provisioning", "ProvisionError", "Removal",
           "Report", "SpecError", "Stage", "TeardownReport", "choose", "provision", "teardown",
           "undefine"]
