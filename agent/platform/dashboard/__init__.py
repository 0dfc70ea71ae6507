"""The dashboard's page and assets, served as files by `agent.platform.static`; a package so
that they ship in the wheel (pyproject.toml's package-data)."""
