"""`support-bot` command line: run the bot, try it, check its config, read its tickets.

Each subcommand imports what it needs inside its own branch: `--help` stays fast, and a module
that fails to import breaks only the subcommands that use it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bot.config import DEFAULT_CONFIG_PATH, LoggingConfig, config_path
from bot.process import QUIET_LOGGERS as QUIET_LOGGERS
from bot.process import setup_logging, stop_on_signals

if TYPE_CHECKING:
    from bot.config import Config, ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = DEFAULT_CONFIG_PATH
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # `--config` wins over SUPPORT_BOT_CONFIG, which wins over bot.toml.
    args.config = config_path(args.config, os.environ)
    # Defaults until a command reads the config (`_load` then applies its [logging]).
    setup_logging(LoggingConfig(), level=args.log_level)
    command: Callable[[argparse.Namespace], int] = getattr(args, "handler", _run)
    try:
        return command(args)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the event loop took over
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        # Any command that opens the database refuses one a newer version migrated.
        if _is_newer_database(error):
            print(f"support-bot: {error}", file=sys.stderr)
            return 1
        raise


def _is_newer_database(error: Exception) -> bool:
    # Only `bot.storage.db` raises it, so it is imported once that is possible.
    db = sys.modules.get("bot.storage.db")
    return db is not None and isinstance(error, db.NewerDatabaseError)


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="support-bot",
        description="Matrix front desk for a support service sold as one-hour tickets.",
        parents=[_common_options(config=None, log_level=None)],
        epilog="Without a subcommand, `run` is assumed.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print support-bot's version and exit"
    )
    # `--config` and `--log-level` are accepted after the subcommand too. There their default
    # is SUPPRESS, so an option given before the subcommand is not reset by it.
    common = _common_options(config=argparse.SUPPRESS, log_level=argparse.SUPPRESS)
    commands = parser.add_subparsers(title="subcommands", dest="command", metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text[:1].upper() + help_text[1:],
        )
        sub.set_defaults(handler=handler)
        return sub

    add("run", _run, "run the bot (the default)")

    demo = add("demo", _demo, "try the bot on this machine: a throwaway homeserver and accounts")
    demo.add_argument(
        "--data-dir",
        default="demo-data",
        metavar="DIR",
        help="where the demo keeps its homeserver, database and config (default: demo-data)",
    )
    demo.add_argument(
        "--port",
        type=_port,
        default=8008,
        help="homeserver port on 127.0.0.1 (default: 8008; 0 picks a free one)",
    )
    demo.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="chat with the bot from this terminal as the demo client "
        "(default: on when standard input is a terminal)",
    )
    demo.add_argument(
        "--reset", action="store_true", help="delete the demo data first and start afresh"
    )
    demo.add_argument(
        "--imap",
        metavar="URL",
        help="turn the e-mail channel on with this mailbox, for tests only: its mails become "
        "requests (imaps://USER@HOST/INBOX; default: $SUPPORT_BOT_DEMO_IMAP; a missing "
        "password is asked for)",
    )
    demo.add_argument(
        "--smtp",
        metavar="URL",
        help="the server the bot sends mail through (smtp://USER@HOST:587, smtps://…:465; "
        "default: $SUPPORT_BOT_DEMO_SMTP; a missing password is asked for)",
    )
    demo.add_argument(
        "--mail-address",
        metavar="ADDRESS",
        help="the support address clients write to (default: the mailbox's login)",
    )
    demo.add_argument(
        "--no-bot",
        dest="bot",
        action="store_false",
        help="prepare the homeserver, accounts and config but do not start the bot "
        "(run it yourself with: support-bot --config DIR/bot.toml run)",
    )

    check = add("check-config", _check_config, "check a configuration file, report every error")
    check.add_argument(
        "path", nargs="?", metavar="PATH", help="file to check (default: the --config file)"
    )

    add("migrate", _migrate, "apply pending database migrations")

    tickets = add("tickets", _missing_subcommand, "list, show or export tickets")
    ticket_commands = tickets.add_subparsers(
        title="tickets subcommands", dest="tickets_command", metavar="COMMAND"
    )
    ticket_commands.add_parser("list", parents=[common], help="list tickets").set_defaults(
        handler=_tickets_list
    )
    show = ticket_commands.add_parser("show", parents=[common], help="show one ticket")
    show.add_argument("ref", metavar="REF", help="ticket reference, e.g. SP-2026-0042")
    show.set_defaults(handler=_tickets_show)
    export = ticket_commands.add_parser("export", parents=[common], help="export every ticket")
    export.add_argument("--json", action="store_true", help="as JSON (default: CSV)")
    export.set_defaults(handler=_tickets_export)

    report = add("report", _report, "monthly billing report")
    report.add_argument(
        "--month", required=True, type=_month, metavar="YYYY-MM", help="the month, e.g. 2026-03"
    )
    report.add_argument(
        "--format", dest="fmt", choices=("csv", "json"), default="csv", help="default: csv"
    )

    e2ee = add("e2ee", _missing_subcommand, "the bot's cross-signing identity (Encryption)")
    e2ee_commands = e2ee.add_subparsers(
        title="e2ee subcommands", dest="e2ee_command", metavar="COMMAND"
    )
    e2ee_commands.add_parser(
        "status",
        parents=[common],
        help="show the identity, its master key and whether the device is signed",
    ).set_defaults(handler=_e2ee_status)
    setup = e2ee_commands.add_parser(
        "setup",
        parents=[common],
        help="create the identity (the bot stopped) and print its recovery key once",
    )
    setup.add_argument(
        "--reset",
        action="store_true",
        help="replace an existing identity (every user sees the bot's identity change)",
    )
    setup.add_argument(
        "--recovery-key-file",
        metavar="PATH",
        help="write the recovery key to this new file (mode 0600) instead of printing it",
    )
    setup.set_defaults(handler=_e2ee_setup)
    restore = e2ee_commands.add_parser(
        "restore",
        parents=[common],
        help="restore the identity from Secret Storage with the recovery key (the bot stopped)",
    )
    restore.add_argument(
        "--recovery-key-file",
        metavar="PATH",
        help="read the recovery key from this file (default: standard input)",
    )
    restore.set_defaults(handler=_e2ee_restore)
    org = add("org", _missing_subcommand, "client organisations and their prepaid tickets")
    org_commands = org.add_subparsers(
        title="org subcommands", dest="org_command", metavar="COMMAND"
    )
    org_commands.add_parser(
        "list", parents=[common], help="every organisation with its balance"
    ).set_defaults(handler=_org_list)
    org_new = org_commands.add_parser("new", parents=[common], help="create an organisation")
    org_new.add_argument("name", metavar="NAME", help='e.g. "Acme Europe" (case does not matter)')
    org_new.set_defaults(handler=_org_new)
    org_add = org_commands.add_parser(
        "add", parents=[common], help="add a client to an organisation (moving them)"
    )
    org_add.add_argument("name", metavar="NAME")
    org_add.add_argument(
        "member",
        metavar="MEMBER",
        help="a Matrix id, a ticket reference of theirs, or a Talk nickname",
    )
    org_add.set_defaults(handler=_org_add)
    org_show = org_commands.add_parser(
        "show", parents=[common], help="an organisation's members, balance and purchases"
    )
    org_show.add_argument("name", metavar="NAME", help="an organisation, or a client in none")
    org_show.set_defaults(handler=_org_show)
    org_credit = org_commands.add_parser(
        "credit", parents=[common], help="record tickets bought (negative: a correction)"
    )
    org_credit.add_argument("name", metavar="NAME", help="an organisation, or a client in none")
    org_credit.add_argument("tickets", metavar="TICKETS", help="e.g. 10, or -2 to correct")
    org_credit.add_argument("--note", help="e.g. the invoice number")
    org_credit.add_argument(
        "--by", default="cli", help="who records it, for the purchase log (default: cli)"
    )
    org_credit.set_defaults(handler=_org_credit)

    client = add("client", _missing_subcommand, "export or erase a client's personal data")
    client_commands = client.add_subparsers(
        title="client subcommands", dest="client_command", metavar="COMMAND"
    )
    for name, handler, help_text in (
        ("export", _client_export, "print a client's data as JSON"),
        ("erase", _client_erase, "delete a client's personal data, keep anonymous billing"),
    ):
        sub = client_commands.add_parser(name, parents=[common], help=help_text)
        sub.add_argument(
            "matrix_id",
            metavar="MATRIX_ID",
            help="e.g. @alice:example.org, or mailto:jean@example.org for a client by e-mail",
        )
        sub.set_defaults(handler=handler)
    return parser


class _VersionAction(argparse.Action):
    """`--version` → `support-bot 0.1.0` on standard output, exit 0.

    argparse's own "version" action wants the string when the parser is built; reading the
    package metadata then would slow every command, `--help` included, for one that asks.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from bot.version import version

        print(f"{parser.prog} {version()}")
        parser.exit(0)


def _common_options(*, config: str | None, log_level: str | None) -> argparse.ArgumentParser:
    # A new parser each time: parents share their action objects with every parser built from
    # them, so a default set on one would leak into the others.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=config,
        help=f"configuration file (default: $SUPPORT_BOT_CONFIG, else {DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=log_level,
        help="log verbosity; overrides [logging] level of the config (default there: INFO)",
    )
    return common


def _month(value: str) -> str:
    from bot.cli_tickets import parse_month  # only when `report` is used

    if parse_month(value) is None:
        raise argparse.ArgumentTypeError(
            f"invalid month {value!r}: expected YYYY-MM with a month from 01 to 12, e.g. 2026-03"
        )
    return value.strip()


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}: expected 0 to 65535")
    return int(value)


# -- subcommands ------------------------------------------------------------------------------


def _missing_subcommand(args: argparse.Namespace) -> int:
    # argparse's `required=True` on nested subparsers gives a poor message; say what to type.
    choices = {
        "tickets": "list, show REF, export --json",
        "client": "export ID, erase ID",
        "e2ee": "status, setup, restore",
        "org": "list, new NAME, add NAME MEMBER, show NAME, credit NAME TICKETS",
    }
    print(
        f"support-bot {args.command}: missing subcommand ({choices[args.command]}); "
        f"see support-bot {args.command} --help",
        file=sys.stderr,
    )
    return 2


def _run(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    from bot.app import run_bot
    from bot.config import ConfigError, summarize

    log.info("%s", summarize(config))

    async def serve() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await run_bot(config, stop=stop)

    from bot.matrix.runtime import MatrixStartError

    try:
        asyncio.run(serve())
    except ConfigError as error:  # problems only visible at start (e.g. an unknown room)
        _print_problems(error)
        return 1
    except MatrixStartError as error:  # a refusal the operator must fix (password, key…)
        log.error("cannot start: %s", error)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bot.demo import DemoOptions, run_demo

    chat = sys.stdin.isatty() if args.chat is None else args.chat
    options = DemoOptions(
        data_dir=args.data_dir,
        port=args.port,
        chat=chat,
        reset=args.reset,
        start_bot=args.bot,
        log_level=args.log_level or "INFO",
        imap=args.imap,
        smtp=args.smtp,
        mail_address=args.mail_address,
    )
    return run_demo(options)


def _check_config(args: argparse.Namespace) -> int:
    from bot.cli_config import check_config_command

    return check_config_command(args.path or args.config)


def _migrate(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    from bot.storage.db import apply_migrations

    applied = asyncio.run(apply_migrations(config.database.url))
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("database up to date")
    return 0


def _tickets_list(args: argparse.Namespace) -> int:
    from bot.cli_tickets import tickets_list

    return _with_config(args, tickets_list)


def _tickets_show(args: argparse.Namespace) -> int:
    from bot.cli_tickets import tickets_show

    return _with_config(args, tickets_show, args.ref)


def _tickets_export(args: argparse.Namespace) -> int:
    from bot.cli_tickets import tickets_export

    return _with_config(args, tickets_export, as_json=args.json)


def _report(args: argparse.Namespace) -> int:
    from bot.cli_tickets import report

    return _with_config(args, report, args.month, args.fmt)


def _e2ee_status(args: argparse.Namespace) -> int:
    from bot.cli_e2ee import e2ee_status

    return _with_config(args, e2ee_status)


def _e2ee_setup(args: argparse.Namespace) -> int:
    from bot.cli_e2ee import e2ee_setup

    return _with_config(
        args, e2ee_setup, reset=args.reset, recovery_key_file=args.recovery_key_file
    )


def _e2ee_restore(args: argparse.Namespace) -> int:
    from bot.cli_e2ee import e2ee_restore

    return _with_config(args, e2ee_restore, recovery_key_file=args.recovery_key_file)


def _org_list(args: argparse.Namespace) -> int:
    from bot.cli_tickets import org_list

    return _with_config(args, org_list)


def _org_new(args: argparse.Namespace) -> int:
    from bot.cli_tickets import org_new

    return _with_config(args, org_new, args.name)


def _org_add(args: argparse.Namespace) -> int:
    from bot.cli_tickets import org_add

    return _with_config(args, org_add, args.name, args.member)


def _org_show(args: argparse.Namespace) -> int:
    from bot.cli_tickets import org_show

    return _with_config(args, org_show, args.name)


def _org_credit(args: argparse.Namespace) -> int:
    from bot.cli_tickets import org_credit

    return _with_config(args, org_credit, args.name, args.tickets, note=args.note, by=args.by)


def _client_export(args: argparse.Namespace) -> int:
    from bot.cli_tickets import client_export

    return _with_config(args, client_export, args.matrix_id)


def _client_erase(args: argparse.Namespace) -> int:
    from bot.cli_tickets import client_erase

    return _with_config(args, client_erase, args.matrix_id)


# -- helpers ----------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> Config | None:
    """The config of `--config`, or None after printing every problem as `key: message`. Its
    [logging] applies from then on (`--log-level` still overriding its level)."""
    from bot.config import ConfigError, load_config

    try:
        config = load_config(args.config, os.environ)
    except ConfigError as error:
        _print_problems(error)
        return None
    setup_logging(config.logging, level=args.log_level)
    if not os.path.exists(args.config):  # logged now, in the format the config asks for
        log.info("no file %s: configured from the environment alone", args.config)
    return config


def _print_problems(error: ConfigError) -> None:
    for key, message in error.problems:
        print(f"{key}: {message}", file=sys.stderr)


def _with_config(args: argparse.Namespace, command: Callable[..., Any], *a: Any, **kw: Any) -> int:
    """Call a `cli_tickets` command with the loaded config; it may be sync or async and may
    return an exit code (None means success)."""
    config = _load(args)
    if config is None:
        return 1
    result = command(config, *a, **kw)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return 0 if result is None else int(result)
