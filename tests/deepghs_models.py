"""The tiny deepghs-format models the tests use (built by the product's own builders, as the demo's)."""

from bakery.testmodels.tiny_deepghs import (
    CCIP_THRESHOLD,
    write_aesthetic,
    write_all,
    write_anime_kind,
    write_ccip,
    write_classifier,
    write_completeness,
    write_corruption,
    write_monochrome,
)

__all__ = ["CCIP_THRESHOLD", "write_aesthetic", "write_all", "write_anime_kind", "write_ccip", "write_classifier",
           "write_completeness", "write_corruption", "write_monochrome"]
