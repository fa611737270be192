"""The ``rechunker-core`` command line: plan, run, info, clean, demo, and
run-part/finish for plans run by independent processes (HPC array jobs).

Bad input prints one line on stderr and exits with status 2, before anything
is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import zarr

from rechunker_core.api import describe_plan, rechunk
from rechunker_core.demo import run_demo
from rechunker_core.executors.parts import PartsExecutor, finish_plan, load_plan, run_part
from rechunker_core.options import parse_bytes
from rechunker_core.progress import ProgressBar
from rechunker_core.resume import clean, is_complete
from rechunker_core.retry import DEFAULT_BACKOFF, DEFAULT_RETRIES

__all__ = ["main", "parse_target_chunks"]


def parse_target_chunks(text: str) -> tuple[int, ...] | dict[str, int]:
    """Parse ``dim=size,...`` or ``size,size,...`` (``-1`` is the whole dimension).

    >>> parse_target_chunks("time=8760,lat=10,lon=-1")
    {'time': 8760, 'lat': 10, 'lon': -1}
    >>> parse_target_chunks("8760,10,10")
    (8760, 10, 10)
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"--target-chunks {text!r} is empty: give dim=size,... or size,size,...")
    try:
        if all("=" in p for p in parts):
            pairs = (p.split("=", 1) for p in parts)
            return {name.strip(): int(size) for name, size in pairs}
        if not any("=" in p for p in parts):
            return tuple(int(p) for p in parts)
    except ValueError:
        pass
    raise ValueError(
        f"--target-chunks {text!r} is not dim=size,... or size,size,... with integer sizes"
    )


def _open_source(path: str) -> zarr.Array[Any] | zarr.Group:
    try:
        return zarr.open(store=path, mode="r")
    except FileNotFoundError as error:
        raise ValueError(f"no zarr array or group at {path}") from error


def _cmd_plan(args: argparse.Namespace) -> int:
    source = _open_source(args.source)
    if args.save is None:
        print(describe_plan(source, parse_target_chunks(args.target_chunks), args.max_mem))
        return 0
    if args.target is None:
        raise ValueError("--save needs --target: the plan file names the arrays it creates")
    if not Path(args.save).absolute().parent.is_dir():
        raise ValueError(f"--save {args.save}: no such directory")
    rechunked = rechunk(
        source,
        parse_target_chunks(args.target_chunks),
        args.max_mem,
        args.target,
        target_options={"overwrite": True} if args.overwrite else None,
        temp_store=args.temp,
        executor=PartsExecutor(args.save, parts=args.parts),
        resume=args.resume,
        retries=args.retries,
        retry_backoff=args.retry_backoff,
    )
    print(rechunked.summary())
    rounds = rechunked.plan.rounds
    print(f"saved {args.save} ({args.parts} part(s) per stage)")
    print(f"stages: {len(rounds)}")
    for k, round_ in enumerate(rounds):
        print(f"stage {k}: {round_.num_tasks} tasks")
    return 0


def _cmd_run_part(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    copied = run_part(plan, args.stage, args.part, args.of)
    print(f"stage {args.stage}, part {args.part} of {plan.parts}: copied {copied} tasks")
    return 0


def _cmd_finish(args: argparse.Namespace) -> int:
    finish_plan(load_plan(args.plan))
    print("every stage complete; intermediates deleted")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    source = _open_source(args.source)
    options = {"overwrite": True} if args.overwrite else None
    rechunked = rechunk(
        source,
        parse_target_chunks(args.target_chunks),
        args.max_mem,
        args.target,
        target_options=options,
        temp_store=args.temp,
        executor=args.executor,
        resume=args.resume,
        retries=args.retries,
        retry_backoff=args.retry_backoff,
    )
    print(rechunked.summary())
    start = time.perf_counter()
    rechunked.execute(progress=ProgressBar())
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed:.1f} s")
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    removed = clean(args.target, args.temp)
    for what in removed:
        print(f"removed {what}")
    if not removed:
        print(f"nothing to clean: {args.target} is complete and holds no leftovers")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    node = _open_source(args.path)
    if isinstance(node, zarr.Array):
        print(f"array {node.shape} {node.dtype}, chunks {node.chunks}, shards {node.shards}")
    else:
        print(f"group of {len(list(node.array_keys()))} array(s)")
    if is_complete(args.path):
        print("complete: yes")
    else:
        print(
            "complete: NO (a run is writing it, or was interrupted: run it again with "
            "--resume, or remove it with 'rechunker-core clean')"
        )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.dir, args.hours, args.max_mem, args.executor, overwrite=args.overwrite)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (status 2), like every bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rechunker-core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target-chunks", required=True, help="dim=size,... or size,size,...")
        p.add_argument("--max-mem", required=True, type=_max_mem, help="e.g. 256MB, 1GiB")

    plan = sub.add_parser("plan", help="print the plan for rechunking SOURCE")
    plan.add_argument("source", help="path or URL of a zarr array or group")
    common(plan)
    plan.add_argument("--target", help="with --save: where to create the target")
    plan.add_argument("--temp", help="with --save: store for intermediates, when needed")
    plan.add_argument(
        "--save",
        metavar="PLAN_JSON",
        help="create the target and temp arrays and save the plan for run-part and finish",
    )
    plan.add_argument(
        "--parts", type=int, default=1, help="with --save: parts (processes) per stage, e.g. 8"
    )
    plan.add_argument("--overwrite", action="store_true", help="replace an existing target")
    plan.set_defaults(run=_cmd_plan)

    run_part = sub.add_parser("run-part", help="run part I of N of one stage of a saved plan")
    run_part.add_argument("plan", help="the file written by 'plan --save'")
    run_part.add_argument("--stage", type=int, required=True, help="stage number, from 0")
    run_part.add_argument("--part", type=int, required=True, help="part number, from 0")
    run_part.add_argument(
        "--of", type=int, help="number of parts (must match the plan's --parts, if given)"
    )
    run_part.set_defaults(run=_cmd_run_part)

    finish_ = sub.add_parser(
        "finish", help="check every stage of a saved plan ran; delete its intermediates"
    )
    finish_.add_argument("plan", help="the file written by 'plan --save'")
    finish_.set_defaults(run=_cmd_finish)

    run = sub.add_parser("run", help="rechunk SOURCE into TARGET")
    run.add_argument("source")
    run.add_argument("target")
    common(run)
    run.add_argument("--temp", help="store for intermediates, when the plan needs them")
    run.add_argument("--executor", default="threads")
    run.add_argument("--overwrite", action="store_true", help="replace an existing target")
    run.set_defaults(run=_cmd_run)

    demo = sub.add_parser("demo", help="rechunk a ~500 MB sample array and check the result")
    demo.add_argument("--dir", default="demo-data")
    demo.add_argument("--hours", type=int, default=8760)
    demo.add_argument("--max-mem", type=_max_mem, default="256MB")
    demo.add_argument("--executor", default="threads")
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="replace source.zarr, target.zarr and temp.zarr in a --dir the demo did not make",
    )
    demo.set_defaults(run=_cmd_demo)
    return _with_reliability(parser, sub, plan, run)


def _with_reliability(
    parser: argparse.ArgumentParser,
    sub: Any,
    plan: argparse.ArgumentParser,
    run: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """Add what failures need: ``run --resume``, retry options, ``clean`` and ``info``."""
    for p in (plan, run):
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue an interrupted run of the same job, skipping the work it finished",
        )
        _retry_flags(p)
    clean_ = sub.add_parser(
        "clean", help="remove what an abandoned (interrupted) run created, and nothing else"
    )
    clean_.add_argument("target", help="the target the run wrote into")
    clean_.add_argument("--temp", help="its temp store, if it was not a path or URL")
    clean_.set_defaults(run=_cmd_clean)
    info = sub.add_parser("info", help="describe a zarr array or group and say if it is complete")
    info.add_argument("path", help="path or URL of a zarr array or group")
    info.set_defaults(run=_cmd_info)
    return parser


def _retry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"retries of a chunk read or write after a transient store error ({DEFAULT_RETRIES})",
    )
    p.add_argument(
        "--retry-backoff",
        type=float,
        default=DEFAULT_BACKOFF,
        metavar="SECONDS",
        help=f"wait before the first retry; later waits double ({DEFAULT_BACKOFF})",
    )


def _max_mem(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


#: How the API names options, and how the command line does.
_CLI_SPELLINGS = (
    ("target_options={'overwrite': True}", "--overwrite"),
    ("temp_options={'overwrite': True}", "--overwrite"),
    ("pass temp_store=", "pass --temp"),
    ("resume=True", "--resume"),
    ("target_store", "TARGET"),
    ("temp_store", "--temp"),
    ("max_mem", "--max-mem"),
    ("target_chunks", "--target-chunks"),
)


def cli_message(error: BaseException) -> str:
    """An error as one line, naming options the way the command line spells them.

    >>> cli_message(ValueError("pass target_options={'overwrite': True}  to replace it"))
    'pass --overwrite to replace it'
    """
    text = " ".join(str(error).split()) or type(error).__name__
    for api, cli in _CLI_SPELLINGS:
        text = text.replace(api, cli)
    if not isinstance(error, ValueError | TypeError | ImportError):
        text = f"{type(error).__name__}: {text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Every error is one line on stderr: status 2 for errors, 130 for Ctrl-C.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        print("rechunker-core: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        print(f"rechunker-core: error: {cli_message(error)}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
