"""XML helpers every layer shares: safe parsing (no DTDs, entities or network; errors name
file:line) and the typed metadata codec.  No I/O, no RPC."""

# The device-metadata namespace and prefix (``metadata``'s), here so that the client can
# name them as defaults without loading lxml.
DEVICES_NAMESPACE = "https://aiovirt.org/xmlns/devices/1"
DEVICES_PREFIX = "aiovirt-devices"
