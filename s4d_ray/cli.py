"""`s4d` command line: a table of subcommands, each declared by its capability's `command.py`
(`COMMANDS`: name, help, `add_arguments`, `run`), and the one place where an error becomes an
exit status (`s4d_ray.errors.exit_code`). The `jobs/*.py` scripts for `ray job submit` run the
same commands through `job_main`. Heavy imports happen inside each command's `run`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from s4d_ray.argtypes import Command
from s4d_ray.errors import report_error

COMMAND_MODULES = (
    "s4d_ray.synthetic.command",  # synth
    "s4d_ray.demo",  # demo
    "s4d_ray.ownvideo.command",  # probe, poses
    "s4d_ray.io.command",  # rectify
    "s4d_ray.engine.command",  # run
    "s4d_ray.viz.command",  # view, report
    "s4d_ray.dynadust3r.command",  # predict, eval-dynadust3r, train-dynadust3r
    "s4d_ray.pointmaps.command",  # export-pointmaps, eval-pointmaps
    "s4d_ray.tracksto4d.command",  # tracksto4d, eval-tracksto4d, train-tracksto4d
)
"""Where the subcommands come from, in the order `s4d --help` lists them."""

JOBS = {
    "process_clips": "run",
    "export_pointmaps": "export-pointmaps",
    "train_dynadust3r": "train-dynadust3r",
    "train_tracksto4d": "train-tracksto4d",
}
"""`jobs/<script>.py` → the subcommand it runs."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def commands() -> dict[str, Command]:
    """Every subcommand by name, from `COMMAND_MODULES`."""
    table: dict[str, Command] = {}
    for module in COMMAND_MODULES:
        for command in importlib.import_module(module).COMMANDS:
            if command.name in table:
                raise RuntimeError(f"subcommand {command.name!r} is declared twice ({module})")
            table[command.name] = command
    return table


def build_parser(table: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The `s4d` parser: `-v` and one subparser per command of `table` (default `commands()`)."""
    parser = argparse.ArgumentParser(
        prog="s4d", description="Stereo VR180 video to metric 4D training data (Stereo4D)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in (table or commands()).items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def run_command(command: Command, args: argparse.Namespace, prefix: str) -> int:
    """`command.run(args)`, its errors mapped to an exit status and one line on stderr (a bug
    keeps its traceback)."""
    try:
        return command.run(args)
    except Exception as error:
        return report_error(error, prefix)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `s4d` console script."""
    table = commands()
    args = build_parser(table).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=LOG_FORMAT)
    return run_command(table[args.command], args, f"s4d {args.command}")


def job_main(script: str, argv: list[str] | None = None) -> int:
    """Main of a `jobs/<script>.py` (`ray job submit`): the subcommand `JOBS` names for it,
    with its own flags, at INFO."""
    name = JOBS[os.path.splitext(os.path.basename(script))[0]]
    command = commands()[name]
    parser = argparse.ArgumentParser(prog=os.path.basename(script), description=command.help)
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return run_command(command, args, f"s4d {name}")


if __name__ == "__main__":
    sys.exit(main())
