"""XML helpers every layer shares: safe parsing (no DTDs, entities or network; errors name
file:line) and the typed metadata codec.  No I/O, no RPC."""
