"""Tests for ``rechunker_core.algorithm``: the planning math, checked against brute force.

Plans are made with a fixed :class:`CostModel` parallelism so results do not
depend on the machine's core count.
"""

from __future__ import annotations

import math
import re
from itertools import pairwise

import hypothesis.strategies as st
import numpy as np
import numpy.testing as npt
import pytest
import zarr
from hypothesis import given, settings
from zarr.storage import MemoryStore

from rechunker_core import rechunk
from rechunker_core.algorithm import (
    MAX_LAYOUT_STAGES,
    CostModel,
    Layout,
    MemoryModel,
    dim_overlap,
    evaluate_stage,
    floor_sum,
    plan_layout,
)
from rechunker_core.chunkio import reading_memory, writing_memory
from tests.helpers import ArrayFactory

Shape = tuple[int, ...]

SETTINGS = settings(max_examples=100, deadline=None)
TWO_CORES = CostModel(parallelism=2)
ONE_CORE = CostModel(parallelism=1)


def minimum_max_mem(shape: Shape, itemsize: int, source: Shape, target: Shape, **kw: object) -> int:
    """The least max_mem the planner accepts, as its error message states it."""
    with pytest.raises(ValueError, match="too small") as info:
        plan_layout(shape, itemsize, source, target, 1, **kw)  # type: ignore[arg-type]
    found = re.search(r"max_mem >= (\d+) bytes", str(info.value))
    assert found, str(info.value)
    return int(found.group(1))


def check_plan(
    plan: Layout, shape: Shape, itemsize: int, source: Shape, target: Shape, max_mem: int
):
    """Every invariant a plan promises."""
    clip = lambda chunks: tuple(min(c, n) for c, n in zip(chunks, shape))  # noqa: E731
    stages = plan.stages
    assert 1 <= len(stages) <= MAX_LAYOUT_STAGES
    assert stages[0].read_chunks == clip(source)
    assert stages[-1].write_chunks == clip(target)
    for before, after in pairwise(stages):
        assert before.write_chunks == after.read_chunks
    assert plan.intermediate_chunks == tuple(s.write_chunks for s in stages[:-1])
    for stage in stages:
        for n, task, write in zip(shape, stage.task_chunks, stage.write_chunks):
            assert 1 <= task <= n
            # Whole write chunks per task, except where the task spans the dimension.
            assert task % write == 0 or task == n
        assert stage.peak_task_memory <= max_mem
        assert stage.num_tasks == math.prod(-(-n // t) for n, t in zip(shape, stage.task_chunks))
        assert stage.bytes_written == math.prod(shape) * itemsize
        assert stage.bytes_read >= stage.bytes_written
    assert plan.peak_task_memory <= max_mem


# --------------------------------------------------------------------------
# floor_sum and dim_overlap against brute force
# --------------------------------------------------------------------------


@SETTINGS
@given(
    n=st.integers(0, 60),
    m=st.integers(1, 60),
    a=st.integers(0, 200),
    b=st.integers(0, 200),
)
def test_floor_sum_matches_brute_force(n: int, m: int, a: int, b: int) -> None:
    assert floor_sum(n, m, a, b) == sum((a * i + b) // m for i in range(n))


def test_floor_sum_large_inputs() -> None:
    n, m, a, b = 10**6, 999_983, 1_000_003, 17
    expected = int(((a * np.arange(n, dtype=object) + b) // m).sum())
    assert floor_sum(n, m, a, b) == expected


def brute_overlap(size: int, region: int, chunk: int) -> tuple[int, int, int]:
    """Walk every task: (chunks touched, elements in them, most chunks one task touches)."""
    touched = elements = most = 0
    for start in range(0, size, region):
        stop = min(start + region, size)
        chunks = range(start // chunk, (stop - 1) // chunk + 1)
        touched += len(chunks)
        elements += sum(min((c + 1) * chunk, size) - c * chunk for c in chunks)
        most = max(most, len(chunks))
    return touched, elements, most


@SETTINGS
@given(data=st.data(), size=st.integers(1, 300))
def test_dim_overlap_matches_brute_force(data: st.DataObject, size: int) -> None:
    region = data.draw(st.integers(1, size + 3), label="region")
    chunk = data.draw(st.integers(1, size), label="chunk")
    touched, elements, most = brute_overlap(size, region, chunk)
    found = dim_overlap(size, region, chunk)
    assert found.chunks_touched == touched
    assert found.elements_touched == elements
    # An upper bound, never below what some task really touches.
    assert most <= found.max_chunks <= -(-size // chunk)


def test_dim_overlap_empty_dimension() -> None:
    assert dim_overlap(0, 4, 3).chunks_touched == 0


def test_evaluate_stage_counts_match_brute_force() -> None:
    shape, read, write, task = (10, 7), (3, 7), (2, 2), (4, 6)
    stage = evaluate_stage(shape, 8, read, write, task, MemoryModel())
    per_dim = [brute_overlap(n, t, r) for n, t, r in zip(shape, task, read)]
    assert stage.read_ops == math.prod(p[0] for p in per_dim)
    assert stage.bytes_read == math.prod(p[1] for p in per_dim) * 8
    assert stage.write_ops == 5 * 4
    assert stage.num_tasks == 3 * 2


# --------------------------------------------------------------------------
# Layout invariants
# --------------------------------------------------------------------------


@st.composite
def geometries(draw: st.DrawFn, max_size: int = 10**5) -> tuple[Shape, Shape, Shape]:
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, max_size), min_size=ndim, max_size=ndim)))
    source = tuple(draw(st.integers(1, n)) for n in shape)
    target = tuple(draw(st.integers(1, n)) for n in shape)
    return shape, source, target


@SETTINGS
@given(
    geometry=geometries(),
    itemsize=st.sampled_from([1, 2, 4, 8]),
    factor=st.one_of(st.just(1.0), st.floats(1.0, 50.0)),
)
def test_plan_invariants(
    geometry: tuple[Shape, Shape, Shape], itemsize: int, factor: float
) -> None:
    shape, source, target = geometry
    least = minimum_max_mem(shape, itemsize, source, target, cost=TWO_CORES)
    max_mem = int(least * factor)
    plan = plan_layout(shape, itemsize, source, target, max_mem, cost=TWO_CORES)
    check_plan(plan, shape, itemsize, source, target, max_mem)


@SETTINGS
@given(geometry=geometries(max_size=2000), itemsize=st.sampled_from([1, 8]))
def test_minimum_max_mem_is_exact(geometry: tuple[Shape, Shape, Shape], itemsize: int) -> None:
    shape, source, target = geometry
    least = minimum_max_mem(shape, itemsize, source, target)
    plan = plan_layout(shape, itemsize, source, target, least)
    check_plan(plan, shape, itemsize, source, target, least)
    with pytest.raises(ValueError, match=f"max_mem >= {least} bytes"):
        plan_layout(shape, itemsize, source, target, least - 1)


@st.composite
def nested_geometries(draw: st.DrawFn) -> tuple[Shape, Shape, Shape]:
    """Per dimension, one chunk size divides the other; shapes may end in partial chunks."""
    shape, source, target = [], [], []
    for _ in range(draw(st.integers(1, 3))):
        small = draw(st.integers(1, 12))
        large = small * draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12]))
        a, b = (small, large) if draw(st.booleans()) else (large, small)
        n = large * draw(st.integers(1, 6)) - draw(st.integers(0, small - 1))
        shape.append(n)
        source.append(min(a, n))
        target.append(min(b, n))
    return tuple(shape), tuple(source), tuple(target)


def nests(a: int, b: int, size: int) -> bool:
    return max(a, b) % min(a, b) == 0 or math.lcm(a, b) >= size


@SETTINGS
@given(geometry=nested_geometries())
def test_nested_sizes_read_each_chunk_once(geometry: tuple[Shape, Shape, Shape]) -> None:
    """When the sizes nest and memory is ample, intermediates nest with their
    neighbours and no stage decodes a chunk twice."""
    shape, source, target = geometry
    plan = plan_layout(shape, 4, source, target, 10**9, cost=ONE_CORE)
    check_plan(plan, shape, 4, source, target, 10**9)
    chain = [plan.stages[0].read_chunks, *(s.write_chunks for s in plan.stages)]
    for before, after in pairwise(chain):
        assert all(nests(a, b, n) for a, b, n in zip(before, after, shape)), chain
    assert [s.read_amplification for s in plan.stages] == [1.0] * len(plan.stages)


def test_time_series_plan_reads_each_chunk_once() -> None:
    """Maps per day to series per pixel: one intermediate, aligned with both ends."""
    shape, source, target = (8760, 180, 360), (24, 180, 360), (8760, 10, 10)
    plan = plan_layout(shape, 4, source, target, 256_000_000, cost=TWO_CORES)
    check_plan(plan, shape, 4, source, target, 256_000_000)
    assert len(plan.stages) >= 2
    assert all(s.read_amplification == 1.0 for s in plan.stages)


def test_a_stage_keeps_every_worker_busy_to_its_end() -> None:
    """W1's first stage: tasks of 31 source chunks, not 32, so two workers end together.

    365 chunks in tasks of 32 leave one of 13 at the end, and one worker idle
    for most of the last round; 31 make as many tasks and chunks.
    """
    shape, source, target = (8760, 180, 360), (24, 180, 360), (8760, 10, 10)
    plan = plan_layout(shape, 4, source, target, 256_000_000, cost=TWO_CORES)
    first = plan.stages[0]
    assert first.task_chunks == (744, 180, 360)
    assert plan.intermediate_chunks[0][0] == 744
    rounds = math.ceil(first.num_tasks / 2)
    assert rounds * first.task_chunks[0] <= 1.02 * shape[0] / 2


def test_the_cost_of_a_stage_counts_its_last_round() -> None:
    evaluate = lambda task: evaluate_stage((8760,), 4, (24,), (task,), (task,), MemoryModel())  # noqa: E731
    even, uneven, one = evaluate(744), evaluate(768), evaluate(8760)
    assert even.num_tasks == uneven.num_tasks == 12
    assert TWO_CORES.stage_seconds(even) < TWO_CORES.stage_seconds(uneven)
    assert ONE_CORE.stage_seconds(even) == pytest.approx(ONE_CORE.stage_seconds(uneven))
    # One task leaves the second worker idle: two cores take as long as one.
    assert TWO_CORES.stage_seconds(one) == pytest.approx(ONE_CORE.stage_seconds(one))


def test_a_single_stage_reaches_regions_aligned_with_the_source() -> None:
    """The extents between aligned ones split source chunks and cost more than
    either end: the walk jumps over them (a step at a time, it stopped at 50
    tasks of (2, 4, 15), each source chunk decoded 9 times)."""
    shape, source, target = (10, 20, 30), (5, 10, 15), (1, 1, 1)
    plan = plan_layout(shape, 8, source, target, 10**9, max_stages=1, cost=TWO_CORES)
    check_plan(plan, shape, 8, source, target, 10**9)
    assert plan.stages[0].read_amplification == 1.0
    assert plan.stages[0].num_tasks == 2


@pytest.mark.parametrize(
    ("shape", "source", "target"),
    [
        ((10_000,), (1000,), (999,)),
        ((10_000,), (999,), (1000,)),
        ((3002, 6), (1000, 1), (999, 6)),
        ((50,), (7,), (5,)),
        ((70, 33), (7, 33), (5, 33)),
        ((70, 33), (7, 1), (5, 33)),
    ],
)
@pytest.mark.parametrize("factor", [1, 1.5, 2, 4, 10, 1000])
def test_coprime_chunks_avoid_one_element_chunks(
    shape: Shape, source: Shape, target: Shape, factor: float
) -> None:
    least = minimum_max_mem(shape, 8, source, target, cost=TWO_CORES)
    max_mem = int(least * factor)
    plan = plan_layout(shape, 8, source, target, max_mem, cost=TWO_CORES)
    check_plan(plan, shape, 8, source, target, max_mem)
    for stage in plan.stages:
        for d, (a, b) in enumerate(zip(source, target)):
            if math.gcd(a, b) == 1 and min(a, b) > 1:
                # No chunk or task smaller than the smaller end along a co-prime dimension.
                assert stage.write_chunks[d] >= min(a, b), plan.summary()
                assert stage.task_chunks[d] >= min(a, b), plan.summary()


@pytest.mark.parametrize(
    ("shape", "source", "target"),
    [((10_000,), (1000,), (999,)), ((70, 33), (7, 33), (5, 33)), ((70, 33), (7, 1), (5, 33))],
)
def test_coprime_chunks_rechunk_correctly(
    make_array: ArrayFactory, shape: Shape, source: Shape, target: Shape
) -> None:
    array = make_array(MemoryStore(), shape, source)
    # The models rechunk() uses for memory stores.
    models = {"source_memory": reading_memory(array), "memory": writing_memory(False, False)}
    least = minimum_max_mem(shape, 8, source, target, **models)
    for max_mem in (least, 4 * least):
        result = rechunk(array, target, max_mem, MemoryStore(), temp_store=MemoryStore())
        # No intermediate chunk thinner than both ends along any dimension.
        smaller = [min(s, t) for s, t in zip(source, target, strict=True)]
        for ref in result.spec[0].intermediates:
            assert all(c >= m for c, m in zip(ref.chunks, smaller, strict=True)), ref.chunks
        out = result.execute()
        assert isinstance(out, zarr.Array)
        assert out.chunks == target
        npt.assert_array_equal(out[...], array[...])


def test_partial_edge_chunks_plan_and_copy(make_array: ArrayFactory) -> None:
    shape, source, target = (10, 7), (3, 4), (4, 3)
    plan = plan_layout(shape, 8, source, target, 10**6, cost=TWO_CORES)
    check_plan(plan, shape, 8, source, target, 10**6)
    array = make_array(MemoryStore(), shape, source)
    out = rechunk(array, target, 10**6, MemoryStore(), temp_store=MemoryStore()).execute()
    assert isinstance(out, zarr.Array)
    assert out.chunks == target
    npt.assert_array_equal(out[...], array[...])


def test_plans_a_4d_array_of_a_million_chunks() -> None:
    shape, source, target = (1000, 100, 100, 100), (1, 10, 10, 10), (1000, 10, 1, 1)
    assert math.prod(-(-n // c) for n, c in zip(shape, source)) == 10**6
    plan = plan_layout(shape, 4, source, target, 100_000_000, cost=TWO_CORES)
    check_plan(plan, shape, 4, source, target, 100_000_000)


def test_same_chunks_is_one_stage() -> None:
    plan = plan_layout((100, 50), 8, (10, 10), (10, 10), 10**6, cost=TWO_CORES)
    assert len(plan.stages) == 1
    assert plan.stages[0].read_amplification == 1.0


def test_empty_array_plans_no_tasks() -> None:
    plan = plan_layout((0, 5), 8, (1, 5), (3, 5), 100)
    assert plan.stages[0].num_tasks == 0


def test_too_small_max_mem_message_names_shape_and_chunks() -> None:
    with pytest.raises(ValueError, match=r"shape \(100, 90\) from chunks \(100, 1\) to \(1, 90\)"):
        plan_layout((100, 90), 4, (100, 1), (1, 90), 10)


def test_max_stages_one_forbids_intermediates() -> None:
    plan = plan_layout((100, 90), 4, (100, 1), (1, 90), 20_000, max_stages=1)
    assert len(plan.stages) == 1
    check_plan(plan, (100, 90), 4, (100, 1), (1, 90), 20_000)
