"""The `envagent` command line: the parser, a table from command to handler, and one module per
family of commands; each command imports only what it needs."""
