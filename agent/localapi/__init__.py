"""The daemon's loopback HTTP API: the server (h11 on asyncio streams), its routes, and the
client the CLI reads it with."""
