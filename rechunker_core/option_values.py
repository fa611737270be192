"""Command-line text -> API values: chunk requests, ``KEY=VALUE`` options, codec names.

The command line spells everything as text (``--target-option
compressors=zstd``, ``--target-chunks air:time=100``); these functions turn
it into what :func:`rechunker_core.rechunk` takes, and raise ``ValueError``
naming the text and what is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "COMPRESSOR_NAMES",
    "array_options",
    "compressors",
    "parse_pairs",
    "parse_target_chunks",
    "parse_value",
    "storage_options",
    "target_chunks_of",
]

#: Compressor names ``compressors=NAME`` accepts, with an optional level: ``zstd:5``.
COMPRESSOR_NAMES = (
    "none",
    "zstd",
    "gzip",
    "blosc-lz4",
    "blosc-lz4hc",
    "blosc-zstd",
    "blosc-zlib",
    "blosc-blosclz",
)


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


def target_chunks_of(texts: Sequence[str]) -> Any:
    """Every ``--target-chunks``: one request, or one per array given as ``NAME:request``.

    >>> target_chunks_of(["time=10"])
    {'time': 10}
    >>> target_chunks_of(["air:time=10,lat=-1", "sub/mask:5,5"])
    {'air': {'time': 10, 'lat': -1}, 'sub/mask': (5, 5)}
    """
    named = [text.partition(":") for text in texts]
    if len(texts) == 1 and not named[0][1]:
        return parse_target_chunks(texts[0])
    if not all(sep and name.strip() for name, sep, _ in named):
        raise ValueError(
            f"--target-chunks given {len(texts)} times: name the array in each, as "
            "NAME:dim=size,... or NAME:size,size,..."
        )
    return {name.strip(): parse_target_chunks(request) for name, _, request in named}


def parse_pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` texts as a dict.

    >>> parse_pairs(["zarr_format=2", "fill_value = 0"], "--target-option")
    {'zarr_format': '2', 'fill_value': '0'}
    """
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {item!r} is not KEY=VALUE (for example {flag} zarr_format=2)")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_value(text: str) -> Any:
    """A value as the command line spells it: a number, true/false, none, or text.

    >>> [parse_value(t) for t in ("2", "-1.5", "nan", "true", "None", "http://x:9000")]
    [2, -1.5, nan, True, None, 'http://x:9000']
    """
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def compressors(name: str, zarr_format: int) -> Any:
    """The codec a compressor name means, for arrays of ``zarr_format``.

    Zarr format 3 takes ``zarr.codecs`` objects and format 2 numcodecs ones;
    a level may follow the name (``zstd:5``, ``blosc-lz4:9``).

    >>> compressors("zstd:5", 3)
    ZstdCodec(level=5, checksum=False)
    >>> compressors("blosc-lz4", 2)
    Blosc(cname='lz4', clevel=5, shuffle=SHUFFLE, blocksize=0)
    >>> compressors("none", 3) is None
    True
    """
    base, _, level_text = name.strip().lower().partition(":")
    if base not in COMPRESSOR_NAMES:
        raise ValueError(
            f"compressors={name!r} is not a known compressor; give one of "
            f"{', '.join(COMPRESSOR_NAMES)} (a level may follow, as in zstd:5)"
        )
    if base == "none":
        return None
    try:
        level = int(level_text) if level_text else None
    except ValueError:
        raise ValueError(f"compressors={name!r}: the level after ':' must be an integer") from None
    if zarr_format == 2:
        return _numcodecs(base, level)
    return _zarr_codec(base, level)


def _zarr_codec(base: str, level: int | None) -> Any:
    from zarr import codecs

    if base == "zstd":
        return codecs.ZstdCodec(level=3 if level is None else level)
    if base == "gzip":
        return codecs.GzipCodec(level=5 if level is None else level)
    cname: Any = base.removeprefix("blosc-")
    return codecs.BloscCodec(cname=cname, clevel=5 if level is None else level, shuffle="shuffle")


def _numcodecs(base: str, level: int | None) -> Any:
    import numcodecs

    if base == "zstd":
        return numcodecs.Zstd(level=3 if level is None else level)
    if base == "gzip":
        return numcodecs.GZip(level=5 if level is None else level)
    cname = base.removeprefix("blosc-")
    return numcodecs.Blosc(cname=cname, clevel=5 if level is None else level)


def _shards(text: str) -> tuple[int, ...] | None:
    """``a,b,c`` as a shard shape (``none``: not sharded)."""
    if text.lower() == "none":
        return None
    try:
        shards = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"shards={text!r} is not a shard shape: give sizes such as shards=100,10,10"
        ) from None
    return shards


def array_options(pairs: dict[str, str], zarr_format: int) -> dict[str, Any]:
    """``--target-option`` / ``--temp-option`` pairs as ``zarr.create_array`` keywords.

    ``compressors`` takes names (:data:`COMPRESSOR_NAMES`), ``shards`` and
    ``dimension_names`` comma-separated lists, ``fill_value`` numbers (or
    ``nan``, ``none``); other values are numbers, true/false, none or text.
    Unknown keys are left for :func:`rechunker_core.rechunk` to refuse with
    its list of accepted ones.

    >>> array_options({"zarr_format": "2", "compressors": "zstd", "shards": "4,4"}, 3)
    {'zarr_format': 2, 'compressors': Zstd(level=3), 'shards': (4, 4)}
    """
    options: dict[str, Any] = {key: parse_value(value) for key, value in pairs.items()}
    fmt = options.get("zarr_format", zarr_format)
    if "compressors" in pairs:
        options["compressors"] = compressors(pairs["compressors"], fmt)
    if "shards" in pairs:
        options["shards"] = _shards(pairs["shards"])
    if "dimension_names" in pairs:
        options["dimension_names"] = tuple(n.strip() for n in pairs["dimension_names"].split(","))
    fill = options.get("fill_value")
    if "fill_value" in pairs and not isinstance(fill, int | float | bool | type(None)):
        raise ValueError(
            f"fill_value={pairs['fill_value']!r} is not a number: give an integer, a float, "
            "nan or none"
        )
    return options


#: Storage options that are always text, however they look: credentials.
_TEXT_STORAGE_OPTIONS = frozenset({"key", "secret", "token", "username", "password"})


def storage_options(pairs: dict[str, str]) -> dict[str, Any]:
    """``--storage-option`` pairs as fsspec keywords (``anon=true``, ``endpoint_url=...``).

    >>> storage_options({"anon": "true", "endpoint_url": "http://127.0.0.1:9000", "key": "123"})
    {'anon': True, 'endpoint_url': 'http://127.0.0.1:9000', 'key': '123'}
    """
    return {
        key: value if key in _TEXT_STORAGE_OPTIONS else parse_value(value)
        for key, value in pairs.items()
    }
