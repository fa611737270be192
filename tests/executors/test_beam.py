"""The Beam executor: a PTransform in users' pipelines, barriers, refusals.

The shared suite runs it on the DirectRunner in multi_threading and
multi_processing modes; these tests cover what is particular to Beam.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from zarr.storage import MemoryStore

from rechunker_core import rechunk
from rechunker_core.chunkio import REGIONS, BufferPool
from rechunker_core.executors.beam import BeamExecutor
from tests.helpers import ArrayFactory, Recorded, assert_same_array

beam = pytest.importorskip("apache_beam")
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

THREADS = {"direct_running_mode": "multi_threading", "direct_num_workers": 2}


@pytest.fixture
def prism_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temp folders go under the test's own: on the DirectRunner, Beam tries
    Prism first, and when it cannot fetch Prism it leaves the folders it made
    for it (``beam-temp*``, and two ``tmp*`` of its environments)."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))


@pytest.mark.usefixtures("prism_leftovers")
def test_plan_in_a_users_pipeline(recorded: Recorded) -> None:
    plan = BeamExecutor().prepare_plan([recorded.spec])
    assert isinstance(plan, beam.PTransform)
    with beam.Pipeline(options=PipelineOptions(flags=[], **THREADS)) as pipeline:
        done = pipeline | plan
        squares = pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * x)
        assert_that(done, equal_to([None]), label="plan done")
        assert_that(squares, equal_to([1, 4, 9]), label="other work done")
    recorded.check()
    assert not recorded.spec.stages[0].target.location.exists()


@pytest.fixture
def unrun_pipeline() -> Iterator[Callable[..., Any]]:
    """Factory of pipelines a test builds but never runs: Beam makes a temp
    folder for each pipeline and deletes it only when the pipeline runs."""
    made: list[Any] = []

    def make(**options: Any) -> Any:
        made.append(beam.Pipeline(options=PipelineOptions(flags=[], **options)))
        return made[-1]

    yield make
    for pipeline in made:
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)


def test_each_stage_waits_for_the_previous_barrier(
    recorded: Recorded, unrun_pipeline: Callable[..., Any]
) -> None:
    pipeline = unrun_pipeline()
    _ = pipeline | BeamExecutor().prepare_plan([recorded.spec, recorded.spec])
    applied = {}

    class Collect(beam.pipeline.PipelineVisitor):  # type: ignore[misc]
        def visit_transform(self, node: beam.pipeline.AppliedPTransform) -> None:
            applied[node.full_label] = node

        def enter_composite_transform(self, node: beam.pipeline.AppliedPTransform) -> None:
            applied[node.full_label] = node

    pipeline.visit(Collect())
    # Each side input's producer, named by the step of the plan it belongs to.
    side_inputs = {
        label: [
            "/".join(side.pvalue.producer.full_label.split("/")[:2]) for side in node.side_inputs
        ]
        for label, node in applied.items()
        if label.startswith("Rechunk/") and label.count("/") == 1
    }
    assert side_inputs == {
        "Rechunk/Seed": [],
        "Rechunk/Stage 0: tasks": [],
        "Rechunk/Stage 0: spread": [],
        "Rechunk/Stage 0: copy": [],
        "Rechunk/Stage 1: tasks": [],
        "Rechunk/Stage 1: spread": [],
        "Rechunk/Stage 1: copy": ["Rechunk/Stage 0: copy"],
        "Rechunk/Finish": ["Rechunk/Stage 1: copy"],
    }


def test_execute_takes_options_and_runner(tmp_path: Path, make_array: ArrayFactory) -> None:
    source = make_array(tmp_path / "s.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    rechunked = rechunk(source, (10, 37), "1MB", str(tmp_path / "t.zarr"), executor="beam")
    options = PipelineOptions(flags=[], direct_running_mode="in_memory")
    target = rechunked.execute(options=options, runner="DirectRunner")
    assert_same_array(target, source)  # type: ignore[arg-type]


def test_a_run_that_fails_before_beam_runs_leaves_no_temp_folder(
    tmp_path: Path, make_array: ArrayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beam deletes a pipeline's temp folder when the pipeline runs; the executor
    deletes it when something fails before."""
    import rechunker_core.executors.beam as ours

    source = make_array(tmp_path / "s.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    rechunked = rechunk(source, (10, 37), "1MB", str(tmp_path / "t.zarr"), executor="beam")
    folders: list[str] = []

    def fails(pipeline: Any) -> int:
        folders.append(pipeline.local_tempdir)
        assert Path(folders[-1]).is_dir()
        raise RuntimeError("failed before the run")

    monkeypatch.setattr(ours, "_workers_in_this_process", fails)
    with pytest.raises(RuntimeError, match="failed before the run"):
        rechunked.execute()
    assert folders and not Path(folders[0]).exists()


@pytest.mark.parametrize("where", ["source", "target", "url"])
def test_refuses_in_memory_stores_on_every_runner(
    tmp_path: Path, make_array: ArrayFactory, where: str
) -> None:
    """Beam runs unpickled copies of the specs even in one process: writes to a
    MemoryStore there would be lost, so rechunk() refuses before the run."""
    on_disk = make_array(tmp_path / "s.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    source = make_array(MemoryStore(), (41, 37), (41, 1)) if where == "source" else on_disk
    target = {"source": str(tmp_path / "t.zarr"), "target": MemoryStore()}.get(
        where, "memory://rechunker-core-beam/t.zarr"
    )
    with pytest.raises(ValueError, match="in-memory store"):
        rechunk(source, (10, 37), "1MB", target, executor="beam")


def test_a_worker_drops_its_buffers_when_its_bundle_ends(
    tmp_path: Path, make_array: ArrayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker's share of a stage is one bundle: when it ends, the region
    kept for a next task of the same size goes, before Beam sets up the next
    stage (it would otherwise stay for BufferPool.IDLE_SECONDS)."""
    source = make_array(tmp_path / "s.zarr", (64, 64), (64, 1), dtype="f8", fill_value=-1)
    rechunked = rechunk(source, (1, 64), "1MB", str(tmp_path / "t.zarr"), executor="beam")
    monkeypatch.setattr(BufferPool, "IDLE_SECONDS", 60.0)
    REGIONS.clear()
    target = rechunked.execute(options=THREADS)
    assert REGIONS.held == 0
    assert_same_array(target, source)  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["options", "dict"])
def test_our_pipeline_skips_beams_type_checks_and_leaves_the_callers_options_alone(
    tmp_path: Path, make_array: ArrayFactory, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """Beam's type checks read the options anew for every comparison of two
    types: 0.025 s of building W1's plan. Ours holds only our transforms."""
    from apache_beam.options.pipeline_options import TypeOptions

    checking: list[bool] = []
    run = beam.Pipeline.run

    def noting(pipeline: Any, *args: Any, **kwargs: Any) -> Any:
        checking.append(pipeline.options.view_as(TypeOptions).pipeline_type_check)
        return run(pipeline, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", noting)
    options = PipelineOptions(flags=[], **THREADS) if given == "options" else dict(THREADS)
    source = make_array(tmp_path / "s.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    rechunked = rechunk(source, (10, 37), "1MB", str(tmp_path / "t.zarr"), executor="beam")
    target = rechunked.execute(options=options)
    assert_same_array(target, source)  # type: ignore[arg-type]
    assert checking == [False]
    if isinstance(options, PipelineOptions):
        assert options.view_as(TypeOptions).pipeline_type_check is True
    else:
        assert options == THREADS


@pytest.mark.parametrize(
    ("options", "workers"),
    [
        ({}, 1),
        ({"direct_running_mode": "in_memory", "direct_num_workers": 2}, 1),
        ({"direct_running_mode": "multi_threading", "direct_num_workers": 3}, 3),
        ({"direct_running_mode": "multi_processing", "direct_num_workers": 2}, 0),
    ],
)
def test_helpers_stand_in_for_the_workers_beam_runs_here(
    options: dict[str, Any], workers: int, unrun_pipeline: Callable[..., Any]
) -> None:
    """Idle workers' helpers (rechunker_core.assist) count the DirectRunner's threads."""
    from rechunker_core.executors.beam import _workers_in_this_process

    pipeline = unrun_pipeline(**options)
    assert _workers_in_this_process(pipeline) == workers


class SamplingPeriods:
    """A progress listener noting the state-sampling period of the bundle each
    report comes from (reports made here come from the task's own thread)."""

    def __init__(self) -> None:
        self.periods: list[int] = []

    def start(self, rounds: Any) -> None:
        pass

    def advance(self, round_number: int, tasks: int, nbytes: int) -> None:
        from apache_beam.runners.worker import statesampler

        self.periods.append(statesampler.get_current_tracker().sampling_period_ms)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("options", [THREADS, {"direct_running_mode": "in_memory"}])
def test_bundles_run_here_end_promptly_and_beams_default_comes_back(
    tmp_path: Path, make_array: ArrayFactory, options: dict[str, Any]
) -> None:
    """A bundle ends once its state sampler's thread wakes: with Beam's default
    of 200 ms each stage started up to 0.2 s late (SAMPLING_PERIOD_MS)."""
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    from rechunker_core.executors.beam import SAMPLING_PERIOD_MS

    source = make_array(tmp_path / "s.zarr", (64, 64), (64, 1), dtype="f8", fill_value=-1)
    rechunked = rechunk(source, (1, 64), "1MB", str(tmp_path / "t.zarr"), executor="beam")
    heard = SamplingPeriods()
    target = rechunked.execute(options=options, progress=heard)
    assert_same_array(target, source)  # type: ignore[arg-type]
    assert len(heard.periods) >= 2 and set(heard.periods) == {SAMPLING_PERIOD_MS}
    after = statesampler.StateSampler("after", CounterFactory())
    assert after.sampling_period_ms == statesampler.DEFAULT_SAMPLING_PERIOD_MS


def test_the_sampling_period_is_beams_again_once_the_last_of_our_runs_ends() -> None:
    from apache_beam.runners.worker import statesampler

    from rechunker_core.executors.beam import SAMPLING_PERIOD_MS, _prompt_bundle_ends

    def period() -> int:
        init: Any = statesampler.StateSampler.__init__
        return int(init.__defaults__[0])

    first, second = _prompt_bundle_ends(), _prompt_bundle_ends()
    first.__enter__()
    second.__enter__()
    assert period() == SAMPLING_PERIOD_MS
    first.__exit__(None, None, None)
    assert period() == SAMPLING_PERIOD_MS
    second.__exit__(None, None, None)
    assert period() == statesampler.DEFAULT_SAMPLING_PERIOD_MS


def test_an_unknown_sampling_default_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from apache_beam.runners.worker import statesampler

    from rechunker_core.executors.beam import _prompt_bundle_ends

    init: Any = statesampler.StateSampler.__init__
    monkeypatch.setattr(init, "__defaults__", (200, "another release's argument"))
    with _prompt_bundle_ends():
        assert init.__defaults__ == (200, "another release's argument")
    assert init.__defaults__ == (200, "another release's argument")


@pytest.mark.parametrize(
    ("options", "runner"),
    [({}, None), (THREADS, "DirectRunner"), ({"runner": "DirectRunner"}, None)],
)
def test_the_direct_runner_runs_the_plan_without_trying_prism_first(
    tmp_path: Path,
    make_array: ArrayFactory,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    runner: str | None,
) -> None:
    """Beam's DirectRunner hands a pipeline to Prism first, fetching its binary
    from GitHub; ours runs the FnApiRunner it falls back on, as tested here."""
    from apache_beam.runners.portability import prism_runner

    tried: list[Any] = []

    def prism(self: Any, pipeline: Any, options: Any) -> Any:
        tried.append(pipeline)
        raise RuntimeError("Prism is not tested here")  # the DirectRunner falls back

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", prism)
    source = make_array(tmp_path / "s.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    rechunked = rechunk(source, (10, 37), "1MB", str(tmp_path / "t.zarr"), executor="beam")
    target = rechunked.execute(options=options, runner=runner)
    assert_same_array(target, source)  # type: ignore[arg-type]
    assert tried == []


def test_runners_other_than_the_direct_runner_are_left_as_given() -> None:
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
    from apache_beam.runners.portability.prism_runner import PrismRunner

    from rechunker_core.executors.beam import _pipeline_options, _runner

    given = BundleBasedDirectRunner()
    assert _runner(given, _pipeline_options(None)) is given
    assert isinstance(_runner("PrismRunner", _pipeline_options(None)), PrismRunner)
    assert isinstance(_runner(None, _pipeline_options({"runner": "FnApiRunner"})), FnApiRunner)
    direct = _runner(None, _pipeline_options(THREADS))
    assert type(direct) is FnApiRunner
