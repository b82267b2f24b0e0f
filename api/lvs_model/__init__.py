"""The shared model: node specs, BGP decisions, the sysctl allowlist, kernel
vocabulary and the API group's names. Pure: no I/O, no clients, no threads."""
