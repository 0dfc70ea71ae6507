"""`envagent doctor`: every check a person needs when their machine does not show up on the
platform, each with a verdict and, when it did not pass, the fix.

The checks go from the outside in, along the way the daemon itself takes: the settings, then
the path to the platform (DNS, TCP, the proxy, TLS), then what the platform says (registration,
the WebSocket upgrade, its clock), then this machine (node, git, self-update), then how the
daemon runs (the service, the process holding the lock). A check that needs an earlier one that
failed is skipped and says which.
"""
