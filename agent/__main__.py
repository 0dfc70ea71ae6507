"""`python -m agent` runs the same CLI as the `envagent` script."""

from agent.cli.main import main

raise SystemExit(main())
