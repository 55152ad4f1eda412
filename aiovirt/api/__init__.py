"""The object API: ``Connection`` (the RPC connection with methods for hosts, domains,
networks, storage, node devices and secrets), the handles those return, typed parameters,
and the domain event types."""
