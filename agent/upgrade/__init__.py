"""Upgrading this install in place, from the package index or a folder of wheels."""
