"""rechunker_core: rechunk chunked N-D arrays in Zarr within a memory bound."""

from rechunker_core.api import Rechunked, rechunk
from rechunker_core.spec import CopySpec, StagedCopySpec

__all__ = ["CopySpec", "Rechunked", "StagedCopySpec", "rechunk"]
__version__ = "0.1.0"
