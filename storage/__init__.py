"""All persistence: the content-addressed store and the DuckDB catalog."""

from storage.catalog import CATALOG_FILE, SCHEMA_VERSION, Catalog, Provenance, ProvenanceStep
from storage.store import ContentStore, Digest, digest_bytes, digest_file

STORE_DIR = "store"

__all__ = [
    "CATALOG_FILE",
    "SCHEMA_VERSION",
    "STORE_DIR",
    "Catalog",
    "ContentStore",
    "Digest",
    "Provenance",
    "ProvenanceStep",
    "digest_bytes",
    "digest_file",
]
