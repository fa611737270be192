"""rechunker_core: rechunk chunked N-D arrays in Zarr within a memory bound."""

from rechunker_core.api import Rechunked, rechunk
from rechunker_core.resume import clean, is_complete
from rechunker_core.retry import StoreError
from rechunker_core.spec import CopySpec, StagedCopySpec

__all__ = [
    "CopySpec",
    "Rechunked",
    "StagedCopySpec",
    "StoreError",
    "clean",
    "is_complete",
    "rechunk",
]
__version__ = "0.1.0"
