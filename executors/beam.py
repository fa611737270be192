"""Apache Beam: the plan is a ``PTransform`` applied as ``pipeline | rechunked.plan``.

Stage ``k`` of every array (a *round*, see
:func:`rechunker_core.copy.rounds`) becomes::

    seed -FlatMap(batches)-> GroupByKey -ParDo(copy, side input: copies of round k-1)->
        copies of round k (one count per batch)

A side input is complete only when everything upstream of it has finished, on
every runner, and a ``ParDo`` processes nothing before its side inputs are
complete, so no task of round ``k`` starts before every task of round
``k - 1`` is done: the copies of the previous round, passed as an iterable
that is never read, are the barrier. (A ``CombineGlobally`` there added about
ten transforms per round, which the DirectRunner took 0.15-0.2 s to build and
run.) The barrier sits on the copies, not on the batches, so every round's
batches are made and grouped in the first bundle, with the seed: on the
DirectRunner a batch ``FlatMap`` behind a barrier was a bundle of its own
between the stages, 0.02-0.03 s with both workers idle. Each batch has a key
of its own, so grouping spreads the batches over all workers; a
``Reshuffle`` did the same in five transforms instead of one, and the
DirectRunner started the first batch 0.1 s later (docs/performance.md). The
seed is an ``Impulse``. After the last round one element runs
:func:`rechunker_core.copy.finish`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from typing import Any

from rechunker_core.copy import (
    Batch,
    Feed,
    Round,
    Tracker,
    finish,
    rounds,
    run_batch,
    running_here,
    worker_idle,
)
from rechunker_core.executors import import_engine
from rechunker_core.spec import StagedCopySpec

__all__ = ["BeamExecutor"]


class BeamExecutor:
    """Builds a ``PTransform``; :meth:`execute_plan` runs it in a new pipeline.

    Parameters
    ----------
    options : apache_beam.options.pipeline_options.PipelineOptions or dict, optional
        Pipeline options, or a dict of option names and values
        (``{"direct_running_mode": "multi_processing", "direct_num_workers": 4}``)
        turned into ``PipelineOptions(flags=[], **options)``. By default no
        options, so the DirectRunner runs the pipeline.
    runner : str or apache_beam.runners.PipelineRunner, optional
        ``"DirectRunner"``, ``"DataflowRunner"``, ``"FlinkRunner"``, ... ;
        by default the ``runner`` option decides. The DirectRunner runs the
        plan on Beam's ``FnApiRunner``, in the mode ``direct_running_mode``
        names, never trying Prism first as Beam's DirectRunner does (it fetches
        Prism from GitHub); ``"PrismRunner"`` asks for Prism.

    Notes
    -----
    Beam serializes every transform into its pipeline, on every runner: even
    the DirectRunner in one process runs copies of the specs, and runners
    may run them in other processes, which cannot see a
    ``zarr.storage.MemoryStore``. So :func:`rechunker_core.rechunk` refuses
    in-memory stores with ``ValueError``, whatever the runner.
    """

    #: Runners may run the transforms in other processes.
    shares_memory = False

    #: What the runner holds per worker while a plan runs, besides the tasks: the
    #: heaps of its own threads (the DirectRunner runs batches on more threads
    #: than workers) and each bundle's state. Measured 2.4-3.1 MB per worker
    #: above what the same plan holds on threads (benchmarks/memory_model.py).
    engine_memory = 4 * 2**20

    def __init__(
        self, options: Any | Mapping[str, Any] | None = None, runner: Any | None = None
    ) -> None:
        import_engine("apache_beam", "beam")  # fail here, before rechunk() writes anything
        self.options = options
        self.runner = runner

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> Any:
        """Return a ``Rechunk`` transform (a ``beam.PTransform``) for ``specs``."""
        import_engine("apache_beam", "beam")
        return _rechunk_class()(tuple(specs), Feed())

    def execute_plan(
        self,
        plan: Any,
        options: Any | Mapping[str, Any] | None = None,
        runner: Any | None = None,
        progress: Tracker | None = None,
    ) -> None:
        """Apply ``plan`` to a new pipeline, run it and wait for it to finish.

        ``options`` and ``runner`` override those given to the executor.
        ``progress`` hears of each batch when the workers run on this machine
        (the DirectRunner, in every ``direct_running_mode``): from this
        process directly, from worker processes through a feed file
        (:meth:`rechunker_core.copy.Tracker.listening`). When the DirectRunner
        runs the workers as threads of this process (``direct_running_mode``
        ``"in_memory"``, the default, or ``"multi_threading"``), every task and
        the last step run here, as in :func:`rechunker_core.copy.run_local`:
        freed memory is then reused and freed chunks are deleted off the task
        threads (:func:`rechunker_core.copy.running_here`), and a stage's
        bundles end without waiting for Beam's state sampler
        (:data:`SAMPLING_PERIOD_MS`).

        Raises
        ------
        RuntimeError
            If the pipeline ends in a state other than ``DONE``.
        """
        beam = import_engine("apache_beam", "beam")
        from apache_beam.runners.runner import PipelineState

        chosen = _pipeline_options(options if options is not None else self.options)
        pipeline = beam.Pipeline(
            runner=_runner(runner if runner is not None else self.runner, chosen),
            options=chosen,
        )
        with _temp_folder_of(pipeline):
            _skip_type_checks(pipeline)
            # A fresh copy: Beam ties a transform to the first pipeline it is applied to.
            _ = pipeline | _rechunk_class()(plan.specs, plan.feed)
            here = _workers_in_this_process(pipeline)
            with (
                plan.feed.listening(progress),
                running_here(here) if here else contextlib.nullcontext(),
                _prompt_bundle_ends() if here else contextlib.nullcontext(),
            ):
                state = pipeline.run().wait_until_finish()
        if state != PipelineState.DONE:
            raise RuntimeError(f"the rechunk pipeline ended in state {state}")


@contextlib.contextmanager
def _temp_folder_of(pipeline: Any) -> Iterator[None]:
    """Delete the temp folder Beam made for ``pipeline`` (``local_tempdir``) if the
    block fails before the pipeline runs: Beam deletes it only when it runs."""
    try:
        yield
    except BaseException:
        folder = getattr(pipeline, "local_tempdir", None)
        if isinstance(folder, str) and os.path.basename(folder).startswith("beam-pipeline-temp"):
            shutil.rmtree(folder, ignore_errors=True)
        raise


#: How often, in milliseconds, the state sampler of a bundle run in this process
#: wakes while our pipeline runs (Beam's default, 200, then applies again). A
#: bundle ends only once its sampler's thread wakes and sees it is done; its
#: period grows to 200 ms in a bundle's first second, so each stage of W1 and
#: the last step started 0.08-0.23 s late with Beam's default, 0.03-0.05 s with
#: this (docs/performance.md). A wake costs a lock and a clock reading.
SAMPLING_PERIOD_MS = 10


class _Sampling:
    """Our pipelines running now with the short period, and Beam's default period
    to restore when the last ends (``None``: it was left alone)."""

    lock = threading.Lock()
    runs = 0
    beams_default: tuple[int] | None = None


@contextlib.contextmanager
def _prompt_bundle_ends() -> Iterator[None]:
    """While the block runs, bundles that start in this process sample their
    state every :data:`SAMPLING_PERIOD_MS`, so they end within that of their
    last element. Beam has no option for it: this lowers the default period of
    ``StateSampler``, which the SDK worker creates with it. A default other than
    the one int of the Beam releases measured is left alone."""
    from apache_beam.runners.worker import statesampler

    init: Any = statesampler.StateSampler.__init__
    with _Sampling.lock:
        if _Sampling.runs == 0:
            found = init.__defaults__
            if isinstance(found, tuple) and len(found) == 1 and type(found[0]) is int:
                _Sampling.beams_default, init.__defaults__ = found, (SAMPLING_PERIOD_MS,)
        _Sampling.runs += 1
    try:
        yield
    finally:
        with _Sampling.lock:
            _Sampling.runs -= 1
            if _Sampling.runs == 0 and _Sampling.beams_default is not None:
                init.__defaults__, _Sampling.beams_default = _Sampling.beams_default, None


def _skip_type_checks(pipeline: Any) -> None:
    """Build ``pipeline`` without Beam's type checks (``pipeline_type_check``).

    The pipeline holds only our transforms, whose types mypy checks. Beam
    checks each transform's input and output types as it is applied, reading
    the pipeline options anew (an argument parser built each time) for every
    comparison of two types: that took 0.025 s of the 0.04 s it took to
    apply W1's plan, with both workers idle (docs/performance.md). The
    pipeline holds a copy of the options it was given: the caller's are left
    as they were.
    """
    from apache_beam.options.pipeline_options import TypeOptions

    pipeline.options.view_as(TypeOptions).pipeline_type_check = False


def _pipeline_options(options: Any | Mapping[str, Any] | None) -> Any:
    """Return ``options`` as ``PipelineOptions``, never parsing ``sys.argv``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if isinstance(options, PipelineOptions):
        return options
    return PipelineOptions(flags=[], **dict(options or {}))


def _runner(runner: Any | None, options: Any) -> Any:
    """The runner for our pipeline: ``runner``, else the one ``options`` name, else
    the DirectRunner; for the DirectRunner, the ``FnApiRunner`` it falls back on.

    Beam's DirectRunner first hands a batch pipeline to Prism, and fetches
    Prism's binary from GitHub into ``~/.apache_beam`` when it is not there: a
    request without a timeout before each run, which waits for ever where a
    firewall drops packets (here, with no route, it fails in 0.06-0.07 s and
    the DirectRunner falls back on the FnApiRunner). Prism ignores
    ``direct_running_mode`` and ``direct_num_workers``, and no test here can
    run it: it stays one ``runner="PrismRunner"`` away.
    """
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    from apache_beam.runners.runner import create_runner

    if runner is None:
        runner = options.view_as(StandardOptions).runner or StandardOptions.DEFAULT_RUNNER
    if isinstance(runner, str):
        runner = create_runner(runner)
    if type(runner) is not SwitchingDirectRunner:
        return runner
    # As the DirectRunner makes it: the workers get the pipeline's options.
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))


def _workers_in_this_process(pipeline: Any) -> int:
    """How many workers run ``pipeline`` as threads of this process: those of the
    DirectRunner (or the FnApiRunner it uses, :func:`_runner`) in
    ``multi_threading`` mode, one in ``in_memory`` mode (its default), else 0
    (other processes, or another runner)."""
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.direct.direct_runner import (
        BundleBasedDirectRunner,
        SwitchingDirectRunner,
    )
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    local = (SwitchingDirectRunner, BundleBasedDirectRunner, FnApiRunner)
    if not isinstance(pipeline.runner, local):
        return 0
    direct = pipeline.options.view_as(DirectOptions)
    if direct.direct_running_mode == "in_memory":
        return 1
    if direct.direct_running_mode == "multi_threading":
        return int(direct.direct_num_workers) or os.cpu_count() or 1
    return 0


@cache
def _rechunk_class() -> type:
    """Define :class:`Rechunk` on first use, so importing this module skips Beam."""
    beam = import_engine("apache_beam", "beam")
    from apache_beam.pvalue import AsIter

    class Rechunk(beam.PTransform):  # type: ignore[misc,name-defined]
        """Copy every stage of the specs, round by round, then clean up.

        Apply it to a pipeline: ``pipeline | Rechunk(specs)``; the output is a
        PCollection holding one ``None`` once everything is done.
        """

        def __init__(self, specs: tuple[StagedCopySpec, ...], feed: Feed | None = None) -> None:
            super().__init__(label="Rechunk")
            self.specs = specs
            self.feed = Feed(None) if feed is None else feed  # where the copies report

        def expand(self, pbegin: Any) -> Any:
            seed = pbegin | "Seed" >> beam.Impulse()  # one element, b""
            barrier: list[Any] = []
            for round_ in rounds(self.specs):
                k = round_.number
                copy = _copy_class()(round_, self.feed)
                done = (
                    seed
                    | f"Stage {k}: tasks" >> beam.FlatMap(_batches, round_)
                    | f"Stage {k}: spread" >> beam.GroupByKey()
                    | f"Stage {k}: copy" >> beam.ParDo(copy, *barrier)
                )
                barrier = [AsIter(done)]
            return seed | "Finish" >> beam.Map(_finish, self.specs, *barrier)

    Rechunk.__module__ = __name__
    return Rechunk


@cache
def _copy_class() -> type:
    """Define :class:`CopyBatches` on first use, so importing this module skips Beam."""
    beam = import_engine("apache_beam", "beam")

    class CopyBatches(beam.DoFn):  # type: ignore[misc,name-defined]
        """Copy the batches of one round; when a worker's bundle ends, its
        kept buffers go (:func:`rechunker_core.copy.worker_idle`): the
        DirectRunner gives each worker one bundle per stage, then pickles
        the next stage's DoFns (about 1 MB per bz2 compressor it makes)."""

        def __init__(self, round_: Round, feed: Feed) -> None:
            super().__init__()
            self.round = round_
            self.feed = feed

        def process(
            self, element: tuple[int, Iterable[tuple[int, int, int]]], barrier: Any = None
        ) -> Iterator[int]:
            for batch in element[1]:
                yield _copy_batch(batch, self.round, self.feed)

        def finish_bundle(self) -> None:
            worker_idle()

    CopyBatches.__module__, CopyBatches.__qualname__ = __name__, "CopyBatches"
    return CopyBatches


def __getattr__(name: str) -> Any:
    # ``rechunker_core.executors.beam.Rechunk`` (and ``CopyBatches``) resolve lazily:
    # pickles find the classes here, and importing the module does not import Beam.
    if name == "Rechunk":
        return _rechunk_class()
    if name == "CopyBatches":
        return _copy_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The functions Beam runs; a ``barrier`` argument is the previous round's copies
# as a side input: waited for, never read.


def _batches(seed: bytes, round_: Round) -> Iterator[tuple[int, tuple[int, int, int]]]:
    # Small elements (stage index, first task, stop), each under a key of its own so
    # grouping spreads them: the round travels once, with the DoFn.
    for key, batch in enumerate(round_.batches()):
        yield key, (round_.stages.index(batch.stage), batch.tasks.start, batch.tasks.stop)


def _copy_batch(element: tuple[int, int, int], round_: Round, feed: Feed) -> int:
    index, start, stop = element
    copied = run_batch(Batch(round_.stages[index], range(start, stop)), recheck=True)
    feed.report(round_.number, copied)
    return copied


def _finish(seed: bytes, specs: tuple[StagedCopySpec, ...], barrier: Any = None) -> None:
    finish(specs)
