"""Property test: any geometry, any feasible max_mem, both Zarr formats -> an exact copy.

Hypothesis draws shapes of 1-4 dimensions whose sizes are not multiples of
the chunks, source and target chunks, and a max_mem at or above the least the
planner accepts. For each case the plan's invariants hold and executing it on
MemoryStores reproduces the source element by element.
"""

from __future__ import annotations

import math
import re

import hypothesis.strategies as st
import numpy.testing as npt
import pytest
import zarr
from hypothesis import given, settings
from zarr.storage import MemoryStore

from rechunker_core import rechunk
from rechunker_core.algorithm import MAX_LAYOUT_STAGES, plan_layout
from rechunker_core.chunkio import reading_memory, writing_memory
from tests.helpers import ArrayFactory, snapshot

Shape = tuple[int, ...]

#: Largest dimension per number of dimensions: keeps every case to a few
#: hundred elements, so even a plan of one-element tasks runs in a second.
MAX_SIZE = {1: 120, 2: 18, 3: 8, 4: 5}


@st.composite
def geometries(draw: st.DrawFn) -> tuple[Shape, Shape, Shape]:
    ndim = draw(st.integers(1, 4))
    most = MAX_SIZE[ndim]
    # One dimension (which one is drawn below) divisible by neither chunk size,
    # so both arrays end in partial chunks; the others are anything.
    n = draw(st.integers(3, most))
    partial = st.sampled_from([c for c in range(2, n) if n % c])
    dims = [(n, draw(partial), draw(partial))]
    for _ in range(ndim - 1):
        size = draw(st.integers(1, most))
        dims.append((size, draw(st.integers(1, size)), draw(st.integers(1, size))))
    dims = draw(st.permutations(dims))
    shape, source, target = (tuple(d[i] for d in dims) for i in range(3))
    return shape, source, target


def least_max_mem(source: zarr.Array, target_chunks: Shape) -> int:
    with pytest.raises(ValueError, match="too small") as info:
        rechunk(source, target_chunks, 1, MemoryStore(), temp_store=MemoryStore())
    found = re.search(r"max_mem >= (\d+) bytes", str(info.value))
    assert found, str(info.value)
    return int(found.group(1))


@pytest.mark.parametrize("zarr_format", [2, 3])
@settings(max_examples=20, deadline=None)
@given(
    geometry=geometries(),
    dtype=st.sampled_from(["i1", "u2", "i4", "f4", "f8"]),
    factor=st.one_of(st.just(1.0), st.floats(1.0, 40.0)),
    temp=st.booleans(),
)
def test_rechunk_reproduces_source(
    make_array: ArrayFactory,
    zarr_format: int,
    geometry: tuple[Shape, Shape, Shape],
    dtype: str,
    factor: float,
    temp: bool,
) -> None:
    shape, source_chunks, target_chunks = geometry
    source = make_array(MemoryStore(), shape, source_chunks, dtype=dtype, zarr_format=zarr_format)
    max_mem = int(least_max_mem(source, target_chunks) * factor)
    target_store, temp_store = MemoryStore(), MemoryStore()
    try:
        result = rechunk(
            source, target_chunks, max_mem, target_store, temp_store=temp_store if temp else None
        )
    except ValueError as error:
        # Without a temp store, only a plan that needs intermediates may be refused.
        assert not temp and "pass temp_store=" in str(error)
        assert snapshot(target_store) == {}
        temp = True
        result = rechunk(source, target_chunks, max_mem, target_store, temp_store=temp_store)
    (spec,) = result.spec

    # The spec is the plan the planner makes for this geometry, and the plan
    # keeps every promise.
    itemsize = source.dtype.itemsize
    # Memory stores everywhere: requests go many at once.
    plan = plan_layout(
        shape,
        itemsize,
        source_chunks,
        target_chunks,
        max_mem,
        max_stages=MAX_LAYOUT_STAGES if temp else 1,
        source_memory=reading_memory(source),
        memory=writing_memory(local=False, sharded=False),
    )
    assert plan.peak_task_memory <= max_mem
    assert [s.task_chunks for s in plan.stages] == [s.task_chunks for s in spec.stages]
    assert spec.stages[0].source.read_chunks == source_chunks
    assert spec.target.chunks == target_chunks
    for stage, planned in zip(spec.stages, plan.stages):
        assert stage.target.chunks == planned.write_chunks
        for n, task, write in zip(shape, stage.task_chunks, stage.target.chunks):
            assert task % write == 0 or task == n
        assert stage.num_tasks == math.prod(-(-n // t) for n, t in zip(shape, stage.task_chunks))
        assert planned.peak_task_memory <= max_mem

    out = result.execute()
    assert isinstance(out, zarr.Array)
    assert out.chunks == target_chunks
    assert out.metadata.zarr_format == zarr_format
    npt.assert_array_equal(out[...], source[...])
    # Intermediates are deleted as the plan's last step.
    assert snapshot(temp_store) == {}
