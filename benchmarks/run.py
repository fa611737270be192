"""End-to-end rechunk benchmark of issue 9: ours on every engine against a plain copy.

Run from the repository root (see benchmarks/README.md; a full run takes long)::

    .venv/bin/python benchmarks/run.py --list
    .venv/bin/python benchmarks/run.py --shape 730,45,90 --repeat 1 --only threads
    nohup .venv/bin/python benchmarks/run.py > benchmarks/data/run.log 2>&1 &

This process is only the driver: it starts one worker process
(``benchmarks/worker.py``) per case, codec variant and repetition,
interleaved (repetition 1 runs every case in order, then repetition 2 ...),
waits for it, and reports medians as markdown tables and as JSON. It imports
neither zarr nor any engine and does no heavy work, so it does not disturb
what the workers measure.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from catalog import (
    CASES,
    CASES_BY_NAME,
    CODECS,
    LATENCY_SHAPE,
    MIB,
    S3_SHAPE,
    SCALE_SHAPE,
    W1_SHAPE,
    W1_SOURCE_CHUNKS,
    W1_TARGET_CHUNKS,
    WORKLOADS,
    CaseInfo,
    Job,
    parse_size,
    resolve_chunks,
    rss_bound,
)
from report import add_ratios, goal_lines, summarize, tables

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
DEFAULT_DATA_DIR = HERE / "data"
VERSIONS: tuple[str, ...] = (
    "zarr",
    "numpy",
    "numcodecs",
    "dask",
    "distributed",
    "apache-beam",
    "prefect",
)
VERSIONS += ("xarray", "tensorstore", "moto", "psutil")


def ints(text: str) -> tuple[int, ...]:
    """``"730,45,90"`` -> ``(730, 45, 90)``."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integers") from None


def positive(text: str) -> int:
    """A positive integer option value."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def shape3(text: str) -> tuple[int, ...]:
    """A 3-D shape ``T,Y,X`` of positive sizes."""
    shape = ints(text)
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape T,Y,X of positive sizes")
    return shape


def chunks3(text: str) -> tuple[int, ...]:
    """3-D chunk sizes, each positive or -1 (the whole dimension)."""
    chunks = ints(text)
    if len(chunks) != 3 or any(c < 1 and c != -1 for c in chunks):
        raise argparse.ArgumentTypeError(f"{text!r} is not chunks T,Y,X (positive sizes or -1)")
    return chunks


def size(text: str) -> int:
    """A memory size such as ``256MB``."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--only", help="comma-separated case names (copy is added as the reference)")
    p.add_argument("--workload", choices=WORKLOADS, default="W1", help="W1 is both codecs")
    p.add_argument("--repeat", type=positive, default=3, help="repetitions (medians are reported)")
    p.add_argument("--shape", type=shape3, default=W1_SHAPE, help="W1 shape T,Y,X")
    p.add_argument("--source-chunks", type=chunks3, default=W1_SOURCE_CHUNKS, help="-1: whole")
    p.add_argument("--target-chunks", type=chunks3, default=W1_TARGET_CHUNKS, help="-1: whole")
    p.add_argument("--max-mem", type=size, default=parse_size("256MB"))
    p.add_argument(
        "--workers", type=positive, default=2, help="threads or processes of every engine"
    )
    p.add_argument("--latency-shape", type=shape3, default=LATENCY_SHAPE)
    p.add_argument("--s3-shape", type=shape3, default=S3_SHAPE)
    p.add_argument("--scale-arrays", type=positive, default=10, help="arrays in the scale group")
    p.add_argument("--scale-shape", type=shape3, default=SCALE_SHAPE)
    p.add_argument(
        "--scale-run-arrays", type=int, default=1, help="arrays whose plan is run (0: none)"
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--json", type=Path, help="results file (default DATA_DIR/results.json)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    p.add_argument("--no-reference", action="store_true", help="do not add the copy case")
    args = p.parse_args(argv)
    if not 0 <= args.scale_run_arrays <= args.scale_arrays:
        p.error(f"--scale-run-arrays {args.scale_run_arrays}: give 0 to {args.scale_arrays}")
    return args


def select_cases(args: argparse.Namespace) -> list[CaseInfo]:
    """The cases of ``--only`` in catalog order (with ``copy``), or all of them."""
    if not args.only:
        return list(CASES)
    names = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = sorted(names - set(CASES_BY_NAME))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES_BY_NAME)}")
    w1 = any(CASES_BY_NAME[n].kind == "w1" for n in names)
    if w1 and not args.no_reference:
        names.add("copy")
    return [case for case in CASES if case.name in names]


def shape_of(case: CaseInfo, args: argparse.Namespace) -> tuple[int, ...]:
    shapes = {"latency": args.latency_shape, "s3": args.s3_shape, "scale": args.scale_shape}
    return tuple(shapes.get(case.kind, args.shape))


def make_job(
    name: str, shape: tuple[int, ...], codec: str, args: argparse.Namespace, **more: Any
) -> Job:
    return Job(
        case=name,
        codec=codec,
        data_dir=str(args.data_dir),
        shape=shape,
        source_chunks=args.source_chunks,
        target_chunks=args.target_chunks,
        max_mem=args.max_mem,
        workers=args.workers,
        scale_arrays=args.scale_arrays,
        scale_run_arrays=args.scale_run_arrays,
        **more,
    )


def schedule(cases: list[CaseInfo], args: argparse.Namespace) -> list[Job]:
    """Every job, interleaved: all cases of repetition 1, then all of repetition 2, ...

    A case with a fixed codec (scale) runs once per repetition, with the first codec.
    """
    codecs = WORKLOADS[args.workload]
    return [
        make_job(case.name, shape_of(case, args), case.codec or codec, args, rep=rep, variant=v)
        for rep in range(1, args.repeat + 1)
        for i, codec in enumerate(codecs)
        for case in cases
        if not (case.codec and i)
        for v in case.variants
    ]


def prepare_job(cases: list[CaseInfo], args: argparse.Namespace) -> Job:
    """The job that generates every missing source the cases read (scale reads none)."""
    shapes = dict.fromkeys(shape_of(case, args) for case in cases if case.kind != "scale")
    codecs = list(WORKLOADS[args.workload])
    sources = [[shape, resolve_chunks(args.source_chunks, shape), codecs] for shape in shapes]
    return make_job("prepare", args.shape, "", args, extra={"sources": sources})


def stop(process: subprocess.Popen[bytes]) -> None:
    """Kill a worker and every process it started (its session's process group)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_worker(job: Job, timeout: float) -> dict[str, Any]:
    """Run ``job`` in a fresh worker process; its outcome, or an ERROR if it died."""
    with tempfile.TemporaryDirectory(prefix="rechunk-bench-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(WORKER), "--job", job.to_json(), "--result", str(result)]
        # Its own session, so a worker that hangs goes with every process it started.
        process = subprocess.Popen(command, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(process)
            return {"status": "ERROR", "notes": [f"timed out after {timeout:.0f} s"]}
        except BaseException:  # Ctrl-C: the worker's session gets no SIGINT of its own
            stop(process)
            raise
        if result.exists():
            outcome: dict[str, Any] = json.loads(result.read_text())
            return outcome
        return {"status": "ERROR", "notes": [f"the worker exited with status {code}"]}


def progress_line(job: Job, outcome: dict[str, Any]) -> str:
    """One line per job while the run goes on."""
    where = f"[rep {job.rep}] {job.codec} {job.case}{' ' + job.variant if job.variant else ''}"
    if outcome["status"] not in ("OK", "FAIL"):
        return f"{where}: {outcome['status']} {'; '.join(outcome.get('notes', []))}"
    return (
        f"{where}: {outcome['wall_s']:.2f} s, CPU {outcome['cpu_util']:.2f}, "
        f"peak RSS {outcome['peak_rss_mib']:.0f} MiB (+{outcome['rss_increase_mib']:.0f}), "
        f"setup {outcome['setup_s'] or 0:.1f} s, {outcome['status']}"
    )


def header(args: argparse.Namespace, cases: list[CaseInfo]) -> str:
    """What was run, on what: versions, shapes and the memory bound."""
    versions = []
    for name in VERSIONS:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} -")
    bound = rss_bound(args.max_mem, args.workers) / MIB
    codecs = "; ".join(f"{c}: {CODECS[c].description}" for c in WORKLOADS[args.workload])
    return "\n".join(
        [
            f"python {platform.python_version()}, {os.cpu_count()} CPUs, " + ", ".join(versions),
            f"W1 shape {args.shape} float32, chunks {args.source_chunks} -> {args.target_chunks}, "
            f"max_mem {args.max_mem / 1e6:.0f} MB, workers {args.workers}, repeat {args.repeat}",
            f"RSS bound 1.2 x max_mem x workers + 200 MiB = {bound:.0f} MiB",
            f"codecs: {codecs}",
            f"cases: {', '.join(c.name for c in cases)}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.name:22} {case.label}")
        return 0
    cases = select_cases(args)
    print(header(args, cases), flush=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    prepared = run_worker(prepare_job(cases, args), args.timeout)
    if prepared["status"] != "OK":
        raise SystemExit(f"generating the sources failed: {prepared.get('notes')}")
    outcomes: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    start = time.perf_counter()
    for job in schedule(cases, args):
        outcome = run_worker(job, args.timeout)
        outcomes.setdefault((job.case, job.codec), []).append((job.variant, outcome))
        print(progress_line(job, outcome), flush=True)
        if outcome["status"] in ("FAIL", "ERROR"):
            print(f"    rerun: {sys.executable} {WORKER} --job '{job.to_json()}' --result out.json")
    print(f"\n{len(outcomes)} case/codec pairs in {time.perf_counter() - start:.0f} s\n")
    bound = rss_bound(args.max_mem, args.workers)
    rows = [summarize(CASES_BY_NAME[c], codec, o, bound) for (c, codec), o in outcomes.items()]
    add_ratios(rows)
    rows.sort(
        key=lambda r: (r["workload"] != "w1", r["codec"], CASES.index(CASES_BY_NAME[r["case"]]))
    )
    print(tables(rows), "\n\nGoals of issue 9:", *goal_lines(rows), sep="\n")
    path = args.json or args.data_dir / "results.json"
    path.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nresults: {path}")
    return 1 if any(r["check"] not in ("OK", "SKIP") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
