"""`envagent service`: run envagent as a systemd or launchd service, and look at it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agent.cli.common import SUBCOMMANDS_HELP, fail, positive_int, settings_flags
from agent.cli.completion import complete_path
from agent.service.managers import MANAGERS

INSTALL_SETTINGS = ("workdir", "name", "mode", "base_url")
DEFAULT_LOG_LINES = 100


def add_flags(service: argparse.ArgumentParser) -> None:
    """`service install|uninstall|status|logs` under `envagent service`'s parser (its help is
    in agent.cli.main, with the other commands')."""
    actions = service.add_subparsers(
        dest="service_command",
        required=True,
        metavar="ACTION",
        help=SUBCOMMANDS_HELP,
    )

    setup = actions.add_parser(
        "install",
        help="write the unit or plist and start it",
        description="The API key and platform URL are taken from LETTA_API_KEY, LETTA_BASE_URL "
        "and the config file, as for `envagent run`, and the proxy and CA file variables "
        "(HTTPS_PROXY, NO_PROXY, SSL_CERT_FILE...) from the environment; the key goes into a "
        "0600 file.",
    )
    _common(setup)
    _writes(
        setup,
        "print every file (the API key as ****, a proxy's password as ***) and command; "
        "change nothing",
    )
    settings_flags(setup, INSTALL_SETTINGS)

    remove = actions.add_parser("uninstall", help="stop the service and remove its files")
    _common(remove)
    _writes(remove, "print every command and file removed; change nothing")

    status = actions.add_parser("status", help="the service manager's view, then the daemon's")
    _common(status)

    logs = actions.add_parser("logs", help="the service's log (journalctl or the launchd log)")
    _common(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument(
        "-n",
        "--lines",
        type=positive_int,
        default=DEFAULT_LOG_LINES,
        metavar="N",
        help="lines to show first",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--user", dest="system", action="store_false", help="a service of yours (default)"
    )
    scope.add_argument(
        "--system",
        dest="system",
        action="store_true",
        help="a service of the machine, started at boot (as root)",
    )
    parser.set_defaults(system=False)
    parser.add_argument(
        "--run-as",
        metavar="USER",
        help="the user a system service runs as (default: $SUDO_USER, or you when not root)",
    )
    parser.add_argument(
        "--manager",
        choices=MANAGERS,
        help="the service manager (default: this platform's; another one with --dry-run or "
        "--root renders its files anyway)",
    )


def _writes(parser: argparse.ArgumentParser, dry_run_help: str) -> None:
    # Either: a dry run shows the paths of a real install, not those under a --root.
    writes = parser.add_mutually_exclusive_group()
    writes.add_argument("--dry-run", action="store_true", help=dry_run_help)
    root = writes.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="write under DIR instead of / and print the commands instead of running them "
        "(for an image or a package)",
    )
    complete_path(root, "directory")


def run(args: argparse.Namespace) -> int:
    """Carry out `envagent service ...`; every error is one line and its exit code."""
    # Imported here, not with the parser that every `envagent` command builds: the settings
    # load pydantic, and the unit and plist writers more of the standard library than the
    # daemon itself uses.
    from agent.daemon.config import load_settings
    from agent.service import control
    from agent.service.detect import default_manager
    from agent.service.install import install, uninstall
    from agent.service.target import ServiceError, resolve_target, service_spec
    from agent.support.settings import CONFIG_ENV

    try:
        target = resolve_target(args.manager or default_manager(), args.system, args.run_as)
        root = Path(os.path.abspath(args.root)) if getattr(args, "root", None) else None
        match args.service_command:
            case "install":
                flags = {name: getattr(args, name) for name in INSTALL_SETTINGS}
                loaded = load_settings(flags, config_path=args.config)
                named = args.config is not None or bool(os.environ.get(CONFIG_ENV))
                spec = service_spec(loaded, config_named=named)
                return install(target, spec, dry_run=args.dry_run, root=root)
            case "uninstall":
                return uninstall(target, dry_run=args.dry_run, root=root)
            case "status":
                return control.status(target)
            case _:
                return control.logs(target, follow=args.follow, lines=args.lines)
    except ServiceError as exc:
        return fail(str(exc), exc.code)
    except OSError as exc:  # writing a file or folder: name it and say why
        return fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
