"""The tiny WD14-format tagger the tests use (built by the product's own builder)."""

from bakery.testmodels.tiny_wd14 import TAGS, write_tiny_wd14

__all__ = ["TAGS", "write_tiny_wd14"]
