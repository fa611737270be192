"""The codec work a rechunk of W1 cannot avoid, against a plain copy's.

A plain copy decodes the source's chunks and encodes them again as they are.
A rechunk decodes the same chunks but encodes the target's, which hold the
same values in another order, and somewhere splits each row of the source
into the target's short runs. The target's layout may compress slower (or
faster) than the source's: that difference is in every rechunk, whatever
the tool. This script times each part on one core, in this process:

    .venv/bin/python benchmarks/codec_floor.py            # both codec variants
    .venv/bin/python benchmarks/codec_floor.py --codec zstd

and prints the *extra CPU seconds* a rechunk spends on the codecs and the
split beyond a copy (decode + split + target encode, less decode + source
encode), and the ratio of the two sums. A rechunk on ``n`` busy cores can
be faster than a copy by no more than what it saves elsewhere (I/O, the
engine), and is slower by at least extra / n seconds when it saves nothing.
Every buffer is touched before it is timed. It reads the sources ``run.py``
generates (run that first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from catalog import CODECS, resolve_chunks
from rechunker_core.blocks import copy_box
from rechunker_core.chunkio import chunk_codec
from workloads import open_source

SHAPE = (8760, 180, 360)
SOURCE_CHUNKS = (24, -1, -1)
TARGET_CHUNKS = (8760, 10, 10)


def cpu(fn: Any, repeat: int) -> float:
    """The least CPU seconds of this thread running ``fn()``, of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def floor(data_dir: Path, codec_name: str, repeat: int) -> dict[str, float]:
    chunks = resolve_chunks(SOURCE_CHUNKS, SHAPE)
    source = open_source(data_dir, SHAPE, chunks, codec_name)
    if source is None:
        raise SystemExit(f"no {codec_name} source in {data_dir}: run benchmarks/run.py first")
    codec = chunk_codec(source)
    assert codec is not None and codec.compressor is not None
    step = chunks[0]
    # The source's chunks as stored (encoded again here: the same codec, untimed).
    encoded = [
        codec.encode(np.ascontiguousarray(source[t : t + step])) for t in range(0, SHAPE[0], step)
    ]
    data = np.empty(SHAPE, source.dtype)

    def decode() -> None:
        for i, blob in enumerate(encoded):
            codec.decode_into(blob, data[i * step : (i + 1) * step])

    def encode_source() -> None:
        for t in range(0, SHAPE[0], step):
            codec.encode(data[t : t + step])

    blocks = np.empty((SHAPE[1] // 10, SHAPE[2] // 10, *TARGET_CHUNKS), source.dtype)

    def split() -> None:
        for t in range(0, SHAPE[0], 768):
            part = data[t : t + 768]
            for j in range(blocks.shape[0]):
                for k in range(blocks.shape[1]):
                    rows = slice(j * 10, (j + 1) * 10), slice(k * 10, (k + 1) * 10)
                    copy_box(blocks[j, k, t : t + 768], part[:, rows[0], rows[1]])

    def encode_target() -> None:
        for j in range(blocks.shape[0]):
            for k in range(blocks.shape[1]):
                codec.encode(blocks[j, k])

    data.fill(0)  # touch every page first: fresh pages cost more than the codecs here
    blocks.fill(0)
    seconds = {"decode": cpu(decode, repeat)}
    seconds["encode source"] = cpu(encode_source, repeat)
    seconds["split"] = cpu(split, repeat)
    assert np.array_equal(blocks[3, 7], data[:, 30:40, 70:80])
    seconds["encode target"] = cpu(encode_target, repeat)
    copy = seconds["decode"] + seconds["encode source"]
    rechunk = seconds["decode"] + seconds["split"] + seconds["encode target"]
    seconds["floor ratio"] = rechunk / copy
    seconds["extra"] = rechunk - copy
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", choices=sorted(CODECS), action="append")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each part (least kept)")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args(argv)
    names = args.codec or sorted(CODECS)
    print(f"W1 {SHAPE} float32, CPU seconds on one core, least of {args.repeat}")
    print("| codec | decode | encode source (copy) | split | encode target | extra CPU s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        s = floor(args.data_dir, name, args.repeat)
        print(
            f"| {name} | {s['decode']:.2f} | {s['encode source']:.2f} | {s['split']:.2f} "
            f"| {s['encode target']:.2f} | {s['extra']:.2f} | {s['floor ratio']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
