"""The connection to the platform: registration, policy and the socket loop."""
