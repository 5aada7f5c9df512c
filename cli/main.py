"""The `mapcap` command: parse (cli/commands.py declares the subcommands), set up logging, run the handler
(cli/handlers.py). It prints results only; logs go to stderr."""
from __future__ import annotations

import sys

from mapcap.cli import console
from mapcap.cli.checks import check_run
from mapcap.cli.commands import BY_NAME, FLOW_COMMANDS, build_parser
from mapcap.cli.startup import command_of, exit_on_sigterm, import_quietly, start_prefect_api_early


def _flag_table(words: list[str]) -> dict | None:
    """The run's flags as data for a flow command (cli/flag_table.py): the shipped table in milliseconds, else
    built from the parameter model (torch, open_clip, Prefect: seconds) and cached for the next command."""
    if command_of(words) not in FLOW_COMMANDS:
        return None
    from mapcap.cli.flag_table import build_table, cache_table, load_table

    table = load_table()
    if table is None:
        table = import_quietly(build_table)
        cache_table(table)
    return table


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from a CLI run
    # without a Prefect server, a run starts a temporary one; on a fresh PREFECT_HOME it first builds its database,
    # which takes longer than Prefect's 20 s default on a slow or busy machine (a newcomer's first `mapcap demo`)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    words = sys.argv[1:] if argv is None else list(argv)
    if argv is None:  # the console command (not a test calling main): leave the process's signals as they are else
        exit_on_sigterm()
    table = _flag_table(words)
    args = build_parser(table, show_all="--help-all" in words).parse_args(words)
    args.table, args.console = table, console.setup(args.verbose, args.debug)
    try:
        if table is not None:  # a flow command: every check that needs no model, before anything heavy
            check_run(args, table, {"dataset": "toy"} if args.cmd == "demo" else None)
        args.wait_for_api = start_prefect_api_early(words)
        from mapcap.cli import handlers

        return getattr(handlers, BY_NAME[args.cmd].handler)(args)
    except (ValueError, RuntimeError, OSError) as e:
        if args.debug:
            raise
        print(f"mapcap {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
