"""The wire contract both sides share: the models of every shape on the wire, its constants and
the errors and query parsing of both HTTP APIs. Pure: it imports nothing else of envagent."""
