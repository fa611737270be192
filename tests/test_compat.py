"""Tests for ``rechunker_core.compat`` (rechunker.algorithm compatibility).

The parametrized cases are the inputs and expected outputs checked by
rechunker's own ``tests/test_algorithm.py``; passing them shows our results
equal rechunker's. Hypothesis tests check the plan invariants.
"""

from __future__ import annotations

import itertools
import math
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from rechunker_core import compat
from rechunker_core.compat import (
    MAX_STAGES,
    ExcessiveIOWarning,
    calculate_single_stage_io_ops,
    calculate_stage_chunks,
    consolidate_chunks,
    multistage_rechunking_plan,
    rechunking_plan,
)

Chunks = tuple[int, ...]

FAST = settings(max_examples=150, deadline=None)


def nbytes(chunks: Chunks, itemsize: int) -> int:
    return itemsize * math.prod(chunks)


# ---------------------------------------------------------------------------
# public surface
# ---------------------------------------------------------------------------


def test_public_names() -> None:
    assert sorted(compat.__all__) == sorted(
        [
            "MAX_STAGES",
            "ExcessiveIOWarning",
            "calculate_single_stage_io_ops",
            "calculate_stage_chunks",
            "consolidate_chunks",
            "multistage_rechunking_plan",
            "rechunking_plan",
        ]
    )
    public = {
        name
        for name in vars(compat)
        if not name.startswith("_")
        and name not in {"annotations", "itertools", "math", "np", "warnings", "Sequence"}
    }
    assert public == set(compat.__all__)


def test_constants() -> None:
    assert MAX_STAGES == 100
    assert issubclass(ExcessiveIOWarning, Warning)
    assert not issubclass(ExcessiveIOWarning, (UserWarning, DeprecationWarning))


# ---------------------------------------------------------------------------
# consolidate_chunks (rechunker cases)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("itemsize", "max_mem", "expected"),
    [
        (4, 8, (1, 2)),  # nothing to gain
        (4, 16, (1, 4)),  # last axis doubled
        (4, 17, (1, 4)),  # spare byte changes nothing
        (4, 64, (2, 8)),  # last axis full, then first axis
        (4, 256, (8, 8)),  # whole array
        (4, 512, (8, 8)),  # never past the array extent
        (8, 256, (4, 8)),  # larger items
    ],
)
def test_consolidate_chunks(itemsize: int, max_mem: int, expected: Chunks) -> None:
    assert consolidate_chunks((8, 8), (1, 2), itemsize, max_mem) == expected


@pytest.mark.parametrize(
    ("max_mem", "chunk_limits", "expected"),
    [
        (16, (None, -1), (1, 4)),
        (16, (-1, None), (2, 2)),
        (32, (None, -1), (1, 8)),
        (32, (None, 4), (1, 4)),
        (32, (8, 4), (2, 4)),
        (32, (8, None), (4, 2)),
        (128, (10, None), (8, 2)),  # limit beyond the extent is truncated
    ],
)
def test_consolidate_chunks_with_limits(
    max_mem: int, chunk_limits: tuple[int | None, ...], expected: Chunks
) -> None:
    result = consolidate_chunks((8, 8), (1, 2), 4, max_mem, chunk_limits=chunk_limits)
    assert result == expected


def test_consolidate_chunks_memory_error() -> None:
    with pytest.raises(ValueError, match=r"^chunk_mem 8 > max_mem 7$"):
        consolidate_chunks((8, 8), (1, 2), 4, 7)


@pytest.mark.parametrize("chunk_limits", [(1, 1), (-2, 2)])
def test_consolidate_chunks_invalid_limits(chunk_limits: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r"Invalid chunk_limits .*"):
        consolidate_chunks((8, 8), (1, 2), 4, 8, chunk_limits=chunk_limits)


@pytest.mark.parametrize(
    ("max_mem", "expected"),
    [(1_000_000_000, (1, 35, 1800, 3600)), (3_000_000_000, (2, 50, 1800, 3600))],
)
def test_consolidate_chunks_4d(max_mem: int, expected: Chunks) -> None:
    result = consolidate_chunks((1000, 50, 1800, 3600), (1, 5, 1800, 3600), 4, max_mem)
    assert result == expected
    assert nbytes(result, 4) <= max_mem


# --- further consolidate_chunks behaviour, derived from rechunker's code ---


def test_consolidate_chunks_exact_fit_is_not_taken() -> None:
    # rechunker only jumps to the cap if memory is left over afterwards; an
    # exact fit falls back to an integer multiple of the original chunk.
    assert consolidate_chunks((7,), (2,), 1, 7) == (6,)
    assert consolidate_chunks((7,), (2,), 1, 8) == (7,)


def test_consolidate_chunks_default_limits_reject_chunk_bigger_than_shape() -> None:
    with pytest.raises(ValueError, match=r"Invalid chunk_limits \(5,\)\."):
        consolidate_chunks((5,), (10,), 1, 100)


def test_consolidate_chunks_limits_wrong_length() -> None:
    with pytest.raises(AssertionError):
        consolidate_chunks((8, 8), (1, 2), 4, 64, chunk_limits=(None,))


def test_consolidate_chunks_returns_tuple_of_int() -> None:
    result = consolidate_chunks([8, 8], [1, 2], 4, 64)
    assert result == (2, 8)
    assert all(type(c) is int for c in result)


# ---------------------------------------------------------------------------
# calculate_stage_chunks (rechunker cases)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("read_chunks", "write_chunks", "stage_count", "expected"),
    [
        ((100, 1), (1, 100), 1, []),
        ((100, 1), (1, 100), 2, [(10, 10)]),
        ((100, 1), (1, 100), 3, [(21, 4), (4, 21)]),
        ((1_000_000, 1), (1, 1_000_000), 2, [(1000, 1000)]),
        ((1_000_000, 1), (1, 1_000_000), 3, [(10000, 100), (100, 10000)]),
        ((1_000_000, 1), (1, 1_000_000), 4, [(31622, 31), (1000, 1000), (31, 31622)]),
        ((10, 10), (1, 100), 2, [(3, 31)]),
    ],
)
def test_calculate_stage_chunks(
    read_chunks: Chunks, write_chunks: Chunks, stage_count: int, expected: list[Chunks]
) -> None:
    assert calculate_stage_chunks(read_chunks, write_chunks, stage_count) == expected


def test_calculate_stage_chunks_default_is_single_stage() -> None:
    assert calculate_stage_chunks((4, 4), (2, 8)) == []


def test_calculate_stage_chunks_floor_quirk_kept() -> None:
    # Same floating-point floor as rechunker: an axis whose read and write
    # chunks agree can still shrink by one in the middle stages.
    assert calculate_stage_chunks((8, 100), (8, 1), 2) == [(7, 10)]


# ---------------------------------------------------------------------------
# calculate_single_stage_io_ops (rechunker cases)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "in_chunks", "out_chunks", "expected"),
    [
        ((6,), (1,), (6,), 6),
        ((10,), (1,), (6,), 10),
        ((6,), (2,), (3,), 4),
        ((24,), (2,), (3,), 16),
        ((10,), (4,), (5,), 4),
        ((100,), (4,), (5,), 40),
        ((100, 100), (1, 100), (100, 1), 10_000),
        ((100, 100), (1, 10), (10, 1), 10_000),
        ((100, 100), (20, 20), (25, 25), 8**2),
        ((50, 50), (20, 20), (25, 25), 4**2),
        ((100,), (43,), (100,), 3),
        ((100,), (43,), (51,), 4),
        ((100,), (43,), (40,), 5),
        ((100,), (43,), (10,), 12),
        ((100,), (43,), (1,), 100),
    ],
)
def test_calculate_single_stage_io_ops(
    shape: Chunks, in_chunks: Chunks, out_chunks: Chunks, expected: int
) -> None:
    assert calculate_single_stage_io_ops(shape, in_chunks, out_chunks) == expected


def test_calculate_single_stage_io_ops_docstring_example() -> None:
    # 0..19 cut every 5 and every 7: |0-4|5-6|7-9|10-13|14|15-19|
    assert calculate_single_stage_io_ops((20,), (5,), (7,)) == 6


@FAST
@given(
    size=st.integers(1, 1000),
    source=st.integers(1, 1000),
    target=st.integers(1, 1000),
)
def test_io_ops_match_brute_force(size: int, source: int, target: int) -> None:
    index = np.arange(size)
    pairs = np.stack([index // source, index // target], axis=1)
    expected = np.unique(pairs, axis=0).shape[0]
    assert calculate_single_stage_io_ops((size,), (source,), (target,)) == expected


@FAST
@given(
    st.lists(
        st.tuples(st.integers(1, 60), st.integers(1, 60), st.integers(1, 60)),
        min_size=1,
        max_size=3,
    )
)
def test_io_ops_is_product_over_axes(axes: list[tuple[int, int, int]]) -> None:
    shape = tuple(a[0] for a in axes)
    cin = tuple(a[1] for a in axes)
    cout = tuple(a[2] for a in axes)
    per_axis = [calculate_single_stage_io_ops((n,), (i,), (o,)) for n, i, o in axes]
    assert calculate_single_stage_io_ops(shape, cin, cout) == math.prod(per_axis)
    # symmetric in the two chunkings
    assert calculate_single_stage_io_ops(shape, cout, cin) == math.prod(per_axis)


# ---------------------------------------------------------------------------
# rechunking_plan (rechunker cases)
# ---------------------------------------------------------------------------


def check_single_stage(
    shape: Chunks,
    source_chunks: Chunks,
    target_chunks: Chunks,
    plan: tuple[Chunks, Chunks, Chunks],
    itemsize: int,
    max_mem: int,
) -> None:
    read_chunks, int_chunks, write_chunks = plan
    for chunks in plan:
        assert len(chunks) == len(shape)
        assert itemsize <= nbytes(chunks, itemsize) <= max_mem
    for n, sc, rc, ic, wc, tc in zip(
        shape, source_chunks, read_chunks, int_chunks, write_chunks, target_chunks
    ):
        assert rc >= sc
        assert wc >= tc
        # whole axis, or an exact multiple of the target (no write overlaps)
        assert wc == n or wc % tc == 0
        assert ic == min(rc, wc)


@pytest.mark.parametrize(
    ("shape", "itemsize", "source", "target", "max_mem", "read", "inter", "write"),
    [
        ((8,), 4, (1,), (1,), 4, (1,), (1,), (1,)),
        ((8,), 4, (1,), (1,), 8, (2,), (2,), (2,)),
        ((8,), 4, (1,), (2,), 8, (2,), (2,), (2,)),
        ((8,), 4, (1,), (2,), 16, (4,), (4,), (4,)),
        ((8,), 4, (1,), (2,), 17, (4,), (4,), (4,)),
        ((16,), 4, (3,), (7,), 32, (7,), (7,), (7,)),  # uneven chunks
    ],
)
def test_rechunking_plan_1d(
    shape: Chunks,
    itemsize: int,
    source: Chunks,
    target: Chunks,
    max_mem: int,
    read: Chunks,
    inter: Chunks,
    write: Chunks,
) -> None:
    plan = rechunking_plan(shape, source, target, itemsize, max_mem)
    assert plan == (read, inter, write)
    check_single_stage(shape, source, target, plan, itemsize, max_mem)


@pytest.mark.parametrize(
    ("max_mem", "read", "inter", "write"),
    [
        (32, (1, 8), (1, 1), (8, 1)),  # no room to consolidate
        (64, (2, 8), (2, 2), (8, 2)),
        (256, (8, 8), (8, 8), (8, 8)),  # whole array
        (512, (8, 8), (8, 8), (8, 8)),  # more memory does not help
    ],
)
def test_rechunking_plan_2d(max_mem: int, read: Chunks, inter: Chunks, write: Chunks) -> None:
    shape, source, target, itemsize = (8, 8), (1, 8), (8, 1), 4
    plan = rechunking_plan(shape, source, target, itemsize, max_mem)
    assert plan == (read, inter, write)
    check_single_stage(shape, source, target, plan, itemsize, max_mem)


def test_intermediate_to_target_memory() -> None:
    # rechunker issue #115: re-planning from the intermediate chunks must be
    # a no-op.
    shape = (175320, 721, 1440)
    target = (21915, 103, 10)
    itemsize, max_mem = 4, 12_000_000_000
    _, int_chunks, _ = rechunking_plan(
        shape, (24, 721, 1440), target, itemsize, max_mem, consolidate_reads=True
    )
    read2, int2, write2 = rechunking_plan(
        shape, int_chunks, target, itemsize, max_mem, consolidate_reads=True
    )
    assert read2 == int2 == write2


@pytest.mark.parametrize(
    ("reads", "writes", "expected"),
    [
        (True, True, ((2, 8), (2, 2), (8, 2))),
        (False, True, ((1, 8), (1, 2), (8, 2))),
        (True, False, ((2, 8), (2, 1), (8, 1))),  # reads still grow toward (8, 1)
        (False, False, ((1, 8), (1, 1), (8, 1))),
    ],
)
def test_rechunking_plan_consolidation_flags(
    reads: bool, writes: bool, expected: tuple[Chunks, Chunks, Chunks]
) -> None:
    plan = rechunking_plan(
        [8, 8],
        [1, 8],
        [8, 1],
        4,
        64,
        consolidate_reads=reads,
        consolidate_writes=writes,
    )
    assert plan == expected


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ((1,), (8, 1), r"^source_chunks \(1,\) must have length 2$"),
        ((1, 8), (8,), r"^target_chunks \(8,\) must have length 2$"),
        ((8, 8), (8, 1), r"^Source chunk memory \(256\) exceeds max_mem \(64\)$"),
        ((1, 8), (8, 8), r"^Target chunk memory \(256\) exceeds max_mem \(64\)$"),
    ],
)
def test_plan_value_errors(source: Chunks, target: Chunks, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rechunking_plan((8, 8), source, target, 4, 64)
    with pytest.raises(ValueError, match=message):
        multistage_rechunking_plan((8, 8), source, target, 4, 4, 64)


# ---------------------------------------------------------------------------
# multistage_rechunking_plan (rechunker cases)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_mem", "expected"),
    [
        (1, [((100, 1), (1, 1), (1, 100))]),
        (
            10,
            [
                ((100, 1), (10, 1), (10, 10)),
                ((10, 10), (1, 10), (1, 100)),
            ],
        ),
    ],
)
def test_multistage_rechunking_plan(
    min_mem: int, expected: list[tuple[Chunks, Chunks, Chunks]]
) -> None:
    stages = multistage_rechunking_plan((100, 100), (100, 1), (1, 100), 1, min_mem, 100)
    assert stages == expected


def test_multistage_rechunking_plan_warns() -> None:
    with pytest.warns(
        ExcessiveIOWarning, match="Search for multi-stage rechunking plan terminated"
    ) as record:
        stages = multistage_rechunking_plan((100, 100), (100, 1), (1, 100), 1, 90, 100)
    message = str(record[0].message)
    assert "Smallest intermediates have size" in message
    assert "min_mem (90)" in message
    assert "max_mem (100)" in message
    # the cheaper plan found before IO started to grow is returned
    assert len(stages) >= 1
    assert stages[0][0] == (100, 1)
    assert stages[-1][-1] == (1, 100)
    assert min(nbytes(ic, 1) for _, ic, _ in stages) < 90


def test_multistage_rechunking_plan_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # MAX_STAGES is read at call time, as in rechunker; with 1 no stage
    # count is tried at all.
    monkeypatch.setattr(compat, "MAX_STAGES", 1)
    with pytest.raises(AssertionError, match="Failed to find a feasible multi-staging rechunking"):
        multistage_rechunking_plan((100, 100), (100, 1), (1, 100), 1, 10, 100)


def test_rechunking_plan_invalid_min_mem() -> None:
    with pytest.raises(
        ValueError, match=r"^max_mem \(100\) cannot be smaller than min_mem \(101\)$"
    ):
        multistage_rechunking_plan((100, 100), (100, 1), (1, 100), 1, 101, 100)


def test_rechunking_plan_is_single_stage_multistage() -> None:
    args = ((350, 72, 144), (3, 72, 144), (350, 1, 1), 4)
    single = rechunking_plan(*args, max_mem=2_000_000)
    multi = multistage_rechunking_plan(*args, min_mem=4, max_mem=2_000_000)
    assert multi == [single]


# ---------------------------------------------------------------------------
# hypothesis: plan invariants
# ---------------------------------------------------------------------------


@st.composite
def plan_inputs(
    draw: st.DrawFn, max_ndim: int = 4, max_len: int = 2_000
) -> tuple[Chunks, Chunks, Chunks, int]:
    """Shape, source and target chunks (within the shape) and itemsize."""
    ndim = draw(st.integers(1, max_ndim))
    shape = tuple(draw(st.integers(1, max_len)) for _ in range(ndim))
    source = tuple(draw(st.integers(1, n)) for n in shape)
    target = tuple(draw(st.integers(1, n)) for n in shape)
    itemsize = draw(st.sampled_from([1, 2, 4, 8]))
    return shape, source, target, itemsize


@FAST
@given(plan_inputs(), st.integers(1, 20), st.data())
def test_consolidate_chunks_properties(
    inputs: tuple[Chunks, Chunks, Chunks, int], factor: int, data: st.DataObject
) -> None:
    shape, chunks, _, itemsize = inputs
    max_mem = nbytes(chunks, itemsize) * factor + data.draw(st.integers(0, 7))
    limits = tuple(
        data.draw(st.one_of(st.none(), st.just(-1), st.integers(c, n + 5)))
        for c, n in zip(chunks, shape)
    )
    result = consolidate_chunks(shape, chunks, itemsize, max_mem, limits)
    assert len(result) == len(shape)
    assert nbytes(result, itemsize) <= max_mem
    for c, r, n, lim in zip(chunks, result, shape, limits):
        if lim is None:
            assert r == c
            continue
        cap = n if lim == -1 else min(lim, n)
        assert c <= r <= cap
        # either a whole multiple of the original chunk, or the cap itself
        assert r % c == 0 or r == cap


@FAST
@given(plan_inputs(), st.integers(1, 10))
def test_rechunking_plan_properties(
    inputs: tuple[Chunks, Chunks, Chunks, int], factor: int
) -> None:
    shape, source, target, itemsize = inputs
    max_mem = max(nbytes(source, itemsize), nbytes(target, itemsize)) * factor
    plan = rechunking_plan(shape, source, target, itemsize, max_mem)
    check_single_stage(shape, source, target, plan, itemsize, max_mem)
    read_chunks, _, write_chunks = plan
    for sc, rc, wc in zip(source, read_chunks, write_chunks):
        # reads grow in whole source chunks, or up to the write chunk
        assert rc % sc == 0 or rc == wc
        assert rc == sc or rc <= wc


@st.composite
def multistage_inputs(
    draw: st.DrawFn,
) -> tuple[Chunks, Chunks, Chunks, int, int, int]:
    """rechunker's strategy: max_mem is 10x the larger chunk, min_mem below."""
    shape, source, target, itemsize = draw(plan_inputs(max_ndim=5, max_len=10_000))
    orig_mem = max(nbytes(source, itemsize), nbytes(target, itemsize))
    max_mem = orig_mem * 10
    upper = min(itemsize * max(math.prod(shape) // 4, 1), 5 * orig_mem)
    min_mem = draw(st.integers(min(itemsize, upper), upper))
    return shape, source, target, itemsize, min_mem, max_mem


@FAST
@given(multistage_inputs())
def test_multistage_plan_properties(
    inputs: tuple[Chunks, Chunks, Chunks, int, int, int],
) -> None:
    shape, source, target, itemsize, min_mem, max_mem = inputs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stages = multistage_rechunking_plan(shape, source, target, itemsize, min_mem, max_mem)
    excessive_io = any(issubclass(w.category, ExcessiveIOWarning) for w in caught)

    assert 1 <= len(stages) < MAX_STAGES
    # stages chain: each stage writes what the next one reads
    for (_, _, write_chunks), (read_chunks, _, _) in itertools.pairwise(stages):
        assert write_chunks == read_chunks
    for sc, rc in zip(source, stages[0][0]):
        assert rc >= sc
    for n, tc, wc in zip(shape, target, stages[-1][-1]):
        assert wc >= tc
        assert wc == n or wc % tc == 0

    smallest = min(nbytes(ic, itemsize) for _, ic, _ in stages)
    if excessive_io:
        assert smallest < min_mem
    else:
        assert smallest >= min_mem
    for read_chunks, int_chunks, write_chunks in stages:
        assert all(len(c) == len(shape) for c in (read_chunks, int_chunks, write_chunks))
        assert all(c >= 1 for c in int_chunks)
        # every chunk of every stage fits the memory budget, and the chunks
        # read and written are never below min_mem (as rechunker checks)
        assert min_mem <= nbytes(read_chunks, itemsize) <= max_mem
        assert nbytes(int_chunks, itemsize) <= max_mem
        assert min_mem <= nbytes(write_chunks, itemsize) <= max_mem
        assert int_chunks == tuple(map(min, read_chunks, write_chunks))
