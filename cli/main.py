"""The `mapcap` command: parse (cli/commands.py declares the subcommands), set up logging, run the handler
(cli/handlers.py). It prints results only; logs go to stderr."""
from __future__ import annotations

import argparse
import logging
import sys

from mapcap.cli.commands import BY_NAME, FLOW_COMMANDS, build_parser
from mapcap.cli.startup import command_of, exit_on_sigterm, import_quietly, start_prefect_api_early


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser. A flow command's flags come from the flow's parameter model, whose import (torch, open_clip,
    Prefect) takes seconds; the other commands leave them out and start at once."""
    if command_of(argv) not in FLOW_COMMANDS:
        return build_parser(flow_flags=False)
    return import_quietly(build_parser)  # the flags import the parameter model


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from a CLI run
    # without a Prefect server, a run starts a temporary one; on a fresh PREFECT_HOME it first builds its database,
    # which takes longer than Prefect's 20 s default on a slow or busy machine (a newcomer's first `mapcap demo`)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    words = sys.argv[1:] if argv is None else list(argv)
    if argv is None:  # the console command (not a test calling main): leave the process's signals as they are else
        exit_on_sigterm()
    wait_for_api = start_prefect_api_early(words)
    args = _parser(words).parse_args(argv)
    args.wait_for_api = wait_for_api
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("root", "httpx", "open_clip"):  # open_clip logs through the root logger
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    for ours in ("mapcap",):  # so our own progress lines still show
        logging.getLogger(ours).setLevel(logging.DEBUG if args.debug else logging.INFO)
    from mapcap.cli import handlers

    try:
        return getattr(handlers, BY_NAME[args.cmd].handler)(args)
    except (ValueError, RuntimeError, OSError) as e:
        if args.debug:
            raise
        print(f"mapcap {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
