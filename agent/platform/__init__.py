"""The reference platform: registration, the relay socket and the listing, over SQLite."""
