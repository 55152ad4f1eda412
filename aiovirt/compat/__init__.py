"""libvirt-python's API on aiovirt: ``aiovirt.compat.aio`` (coroutines) and
``aiovirt.compat.libvirt`` (the blocking drop-in: ``import aiovirt.compat.libvirt as
libvirt``); ``constants`` and ``names`` are generated (scripts/gen-compat-constants,
scripts/gen-compat-names)."""
