"""The ``rechunker-core`` command line (also ``python -m rechunker_core``): plan,
run, info, clean, demo, and run-part/finish for plans run by independent
processes (HPC array jobs).

Argument parsing only: each command turns its arguments into a call of the
API or an executor. Bad input prints one line on stderr and exits with
status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import zarr

from rechunker_core.api import describe_plan, draw_plan, rechunk
from rechunker_core.demo import run_demo
from rechunker_core.display import describe_store
from rechunker_core.executors import get_executor, import_engine
from rechunker_core.executors.beam import BeamExecutor
from rechunker_core.executors.dask import DaskExecutor
from rechunker_core.executors.parts import PartsExecutor, finish_plan, load_plan, run_part
from rechunker_core.executors.prefect import PrefectExecutor
from rechunker_core.executors.threads import ThreadsExecutor
from rechunker_core.option_values import (
    COMPRESSOR_NAMES,
    array_options,
    parse_pairs,
    parse_target_chunks,
    storage_options,
    target_chunks_of,
)
from rechunker_core.options import DEFAULT_MEMORY_SHARE, default_max_mem, parse_bytes
from rechunker_core.progress import choose_progress
from rechunker_core.resume import clean, is_complete
from rechunker_core.retry import DEFAULT_BACKOFF, DEFAULT_RETRIES

__all__ = ["main", "parse_target_chunks"]

DESCRIPTION = """\
Rechunk Zarr arrays, groups and xarray datasets stored as Zarr, within a memory bound.

  rechunker-core info STORE                       what a store holds
  rechunker-core plan SOURCE --target-chunks ...  the plan, as text or a picture (--svg)
  rechunker-core run SOURCE TARGET --target-chunks ...

Bad input prints one line and exits with status 2 before anything is written.
"""

#: Local dask schedulers ``--scheduler`` names; anything else is a scheduler address.
_LOCAL_SCHEDULERS = ("threads", "processes", "sync", "synchronous", "single-threaded")


def _open_source(path: str, storage: dict[str, Any]) -> zarr.Array[Any] | zarr.Group:
    try:
        if storage and "://" in path:  # zarr takes fsspec options for URLs only
            return zarr.open(store=path, mode="r", storage_options=storage)
        return zarr.open(store=path, mode="r")
    except FileNotFoundError as error:
        raise ValueError(f"no zarr array or group at {path}") from error


def _source_format(source: zarr.Array[Any] | zarr.Group) -> int:
    return int(source.metadata.zarr_format)


def _options(args: argparse.Namespace, source: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``target_options`` and ``temp_options`` from the options given (temp: None if none)."""
    storage = storage_options(parse_pairs(args.storage_option, "--storage-option"))
    target_pairs = parse_pairs(args.target_option, "--target-option")
    target = array_options(target_pairs, _source_format(source))
    if storage:
        target["storage_options"] = storage
    if getattr(args, "overwrite", False):
        target["overwrite"] = True
    temp_pairs = parse_pairs(args.temp_option, "--temp-option")
    if not temp_pairs:
        return target, None
    temp = array_options(temp_pairs, target.get("zarr_format", _source_format(source)))
    if storage:
        temp["storage_options"] = storage
    return target, temp


def _max_mem(args: argparse.Namespace) -> tuple[int, str]:
    """The ``--max-mem`` given, or the default share of memory; and how it was chosen."""
    if args.max_mem is not None:
        return args.max_mem, "given"
    workers = args.workers or _cpu_count()
    share = f"{DEFAULT_MEMORY_SHARE:.0%} of the memory available over {workers} worker(s)"
    return default_max_mem(workers), f"default: {share}"


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _cmd_plan(args: argparse.Namespace) -> int:
    storage = storage_options(parse_pairs(args.storage_option, "--storage-option"))
    source = _open_source(args.source, storage)
    chunks = target_chunks_of(args.target_chunks)
    target_options, _ = _options(args, source)
    target_options.pop("overwrite", None)
    max_mem, how = _max_mem(args)
    if args.svg is not None:
        Path(args.svg).write_text(draw_plan(source, chunks, max_mem, target_options))
    if args.save is None:
        print(describe_plan(source, chunks, max_mem, target_options))
        print(f"max_mem: {how}")
        if args.svg is not None:
            print(f"picture of the plan: {args.svg}")
        return 0
    return _save_plan(args, source, chunks, max_mem)


def _save_plan(args: argparse.Namespace, source: Any, chunks: Any, max_mem: int) -> int:
    if args.target is None:
        raise ValueError("--save needs --target: the plan file names the arrays it creates")
    if not Path(args.save).absolute().parent.is_dir():
        raise ValueError(f"--save {args.save}: no such directory")
    target_options, temp_options = _options(args, source)
    rechunked = rechunk(
        source,
        chunks,
        max_mem,
        args.target,
        target_options=target_options,
        temp_store=args.temp,
        temp_options=temp_options,
        executor=PartsExecutor(args.save, parts=args.parts),
        keep_temp=args.keep_temp,
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
    progress = choose_progress(False if args.quiet else None)
    copied = run_part(plan, args.stage, args.part, args.of, progress=progress)
    print(f"stage {args.stage}, part {args.part} of {plan.parts}: copied {copied} tasks")
    return 0


def _cmd_finish(args: argparse.Namespace) -> int:
    finish_plan(load_plan(args.plan))
    print("every stage complete; intermediates deleted")
    return 0


@contextmanager
def _executor(name: str, workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """The executor ``--executor``, ``--workers`` and ``--scheduler`` ask for."""
    if scheduler is not None and name != "dask":
        raise ValueError(f"--scheduler is for --executor dask, not --executor {name}")
    if name == "dask" and scheduler is not None and scheduler not in _LOCAL_SCHEDULERS:
        distributed = import_engine("distributed", "dask")
        with distributed.Client(scheduler, set_as_default=False) as client:
            yield DaskExecutor(scheduler=client)
        return
    if name == "threads":
        yield ThreadsExecutor(max_workers=workers)
    elif name == "dask":
        yield DaskExecutor(scheduler=scheduler or "threads", num_workers=workers)
    elif name == "prefect" and workers is not None:
        from prefect.task_runners import ThreadPoolTaskRunner

        yield PrefectExecutor(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    elif name == "beam" and workers is not None:
        yield BeamExecutor(
            {"direct_running_mode": "multi_threading", "direct_num_workers": workers}
        )
    elif workers is not None and workers > 1:
        raise ValueError(f"--workers is not supported by --executor {name}")
    else:
        yield get_executor(name)


def _cmd_run(args: argparse.Namespace) -> int:
    storage = storage_options(parse_pairs(args.storage_option, "--storage-option"))
    source = _open_source(args.source, storage)
    target_options, temp_options = _options(args, source)
    max_mem, how = _max_mem(args)
    with _executor(args.executor, args.workers, args.scheduler) as executor:
        rechunked = rechunk(
            source,
            target_chunks_of(args.target_chunks),
            max_mem,
            args.target,
            target_options=target_options,
            temp_store=args.temp,
            temp_options=temp_options,
            executor=executor,
            keep_temp=args.keep_temp,
            resume=args.resume,
            retries=args.retries,
            retry_backoff=args.retry_backoff,
        )
        print(rechunked.summary())
        print(f"max_mem: {how}", flush=True)
        start = time.perf_counter()
        rechunked.execute(progress=False if args.quiet else None)
        print(rechunked.result_line(time.perf_counter() - start))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    storage = storage_options(parse_pairs(args.storage_option, "--storage-option"))
    print(describe_store(_open_source(args.store, storage), args.store))
    if is_complete(args.store, storage_options=storage or None):
        print("complete: yes")
    else:
        print(
            "complete: NO (a run is writing it, or was interrupted: run it again with "
            "--resume, or remove it with 'rechunker-core clean')"
        )
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    removed = clean(args.target, args.temp)
    for what in removed:
        print(f"removed {what}")
    if not removed:
        print(f"nothing to clean: {args.target} is complete and holds no leftovers")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.dir, args.hours, args.max_mem, args.executor, overwrite=args.overwrite)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (status 2), like every bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _max_mem_type(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer (for example 4)")
    return number


def _chunk_and_memory_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target-chunks",
        required=True,
        action="append",
        metavar="CHUNKS",
        help="dim=size,... or size,size,... (-1: whole dimension), e.g. time=-1,lat=10; "
        "per array NAME:CHUNKS, repeated, e.g. air:time=100",
    )
    p.add_argument(
        "--max-mem",
        type=_max_mem_type,
        # argparse expands % in help text: the share's percent sign is doubled.
        help=f"most array data one task holds, e.g. 256MB or 1GiB (default: "
        f"{DEFAULT_MEMORY_SHARE * 100:.0f}%% of the available memory over the workers)",
    )


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a zarr array option of the target, repeated: zarr_format=2, compressors=zstd "
        f"({', '.join(COMPRESSOR_NAMES)}), shards=100,10,10, fill_value=nan",
    )
    p.add_argument(
        "--temp-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the same for the intermediates, e.g. compressors=none",
    )
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec option of every store, repeated, e.g. anon=true or "
        "endpoint_url=http://127.0.0.1:9000",
    )
    p.add_argument(
        "--keep-temp", action="store_true", help="keep the intermediates after a successful run"
    )


def _add_plan(sub: Any) -> None:
    plan = sub.add_parser(
        "plan",
        help="print the plan for rechunking SOURCE, or save it for run-part",
        description=(
            "Print the plan: stages, tasks, bytes read and written, peak task memory. "
            "Nothing is written unless --save is given."
        ),
    )
    plan.add_argument("source", help="path or URL of a zarr array or group, e.g. data.zarr/air")
    _chunk_and_memory_options(plan)
    _store_options(plan)
    plan.add_argument("--svg", metavar="FILE", help="also draw the plan as SVG, e.g. plan.svg")
    plan.add_argument("--target", help="with --save: where to create the target, e.g. out.zarr")
    plan.add_argument("--temp", help="with --save: store for intermediates, e.g. tmp.zarr")
    plan.add_argument(
        "--save",
        metavar="PLAN_JSON",
        help="create the target and temp arrays and save the plan for run-part and finish, "
        "e.g. plan.json",
    )
    plan.add_argument(
        "--parts",
        type=_positive,
        default=1,
        help="with --save: parts (processes) per stage, e.g. 8",
    )
    plan.add_argument("--overwrite", action="store_true", help="with --save: replace a target")
    plan.add_argument("--workers", type=_positive, help="workers the default --max-mem is for")
    _reliability_options(plan)
    plan.set_defaults(run=_cmd_plan)


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="rechunk SOURCE into TARGET", description="Rechunk SOURCE into TARGET."
    )
    run.add_argument("source", help="path or URL of a zarr array or group, e.g. data.zarr")
    run.add_argument("target", help="where the result goes, e.g. out.zarr or s3://bucket/out.zarr")
    _chunk_and_memory_options(run)
    _store_options(run)
    run.add_argument(
        "--temp", help="store for intermediates when the plan needs them, e.g. tmp.zarr"
    )
    run.add_argument(
        "--executor",
        default="threads",
        help="python, threads (default), dask, prefect, beam, or a registered name",
    )
    run.add_argument("--workers", type=_positive, help="tasks run at once, e.g. 4 (default: CPUs)")
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="with --executor dask: a running scheduler, e.g. tcp://127.0.0.1:8786, or threads, "
        "processes, sync",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing target")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _reliability_options(run)
    run.set_defaults(run=_cmd_run)


def _add_parts(sub: Any) -> None:
    run_part = sub.add_parser("run-part", help="run part I of N of one stage of a saved plan")
    run_part.add_argument("plan", help="the file written by plan --save, e.g. plan.json")
    run_part.add_argument("--stage", type=int, required=True, help="stage number, from 0")
    run_part.add_argument("--part", type=int, required=True, help="part number, from 0")
    run_part.add_argument(
        "--of", type=int, help="number of parts (must match the plan's --parts, if given), e.g. 8"
    )
    run_part.add_argument("--quiet", action="store_true", help="no progress bar")
    run_part.set_defaults(run=_cmd_run_part)
    finish_ = sub.add_parser(
        "finish", help="check every stage of a saved plan ran; delete its intermediates"
    )
    finish_.add_argument("plan", help="the file written by plan --save, e.g. plan.json")
    finish_.set_defaults(run=_cmd_finish)


def _add_info_and_demo(sub: Any) -> None:
    info = sub.add_parser(
        "info", help="list the arrays of a store: shape, dtype, chunks, shards, codecs, size"
    )
    info.add_argument("store", help="path or URL of a zarr array or group, e.g. data.zarr")
    info.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec option, repeated, e.g. anon=true",
    )
    info.set_defaults(run=_cmd_info)
    demo = sub.add_parser("demo", help="rechunk a ~500 MB sample array and check the result")
    demo.add_argument("--dir", default="demo-data", help="where the sample data goes (demo-data)")
    demo.add_argument("--hours", type=_positive, default=8760, help="time steps, e.g. 240")
    demo.add_argument("--max-mem", type=_max_mem_type, default="256MB", help="e.g. 64MB")
    demo.add_argument("--executor", default="threads", help="e.g. python, dask")
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="replace source.zarr, target.zarr and temp.zarr in a --dir the demo did not make",
    )
    demo.set_defaults(run=_cmd_demo)


def _add_clean(sub: Any) -> None:
    clean_ = sub.add_parser(
        "clean", help="remove what an abandoned (interrupted) run created, and nothing else"
    )
    clean_.add_argument("target", help="the target the run wrote into, e.g. out.zarr")
    clean_.add_argument("--temp", help="its temp store, if it was not a path or URL")
    clean_.set_defaults(run=_cmd_clean)


def _reliability_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run of the same job, skipping the work it finished",
    )
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


def _version() -> str:
    try:
        return version("rechunker-core")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rechunker-core",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rechunker-core {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_info_and_demo(sub)
    _add_plan(sub)
    _add_run(sub)
    _add_parts(sub)
    _add_clean(sub)
    return parser


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
    ("in target_options", "in --target-option"),
    ("in temp_options", "in --temp-option"),
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


def _joined(argv: Sequence[str]) -> list[str]:
    """``--target-chunks -1,25,1`` as ``--target-chunks=-1,25,1``.

    argparse takes a value that starts with ``-`` for an option.

    >>> _joined(["run", "--target-chunks", "-1,25,1", "--quiet"])
    ['run', '--target-chunks=-1,25,1', '--quiet']
    """
    joined: list[str] = []
    items = iter(argv)
    for item in items:
        if item == "--target-chunks":
            value = next(items, None)
            joined.append(item if value is None else f"{item}={value}")
        else:
            joined.append(item)
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Every error is one line on stderr: status 2 for errors, 130 for Ctrl-C.
    """
    parser = _parser()
    args = parser.parse_args(_joined(sys.argv[1:] if argv is None else argv))
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
