"""The RPC client: dialers and transports (how bytes move), channels (one socket each: the
sans-IO protocol, callers waiting, keepalive, the handshake), the RPC connection (lanes,
event routing, lifetime) and event subscriptions.  It never imports the object API."""
