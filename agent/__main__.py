"""`python -m agent` runs the same CLI as the `envagent` script."""

from agent.cli import main

raise SystemExit(main())
