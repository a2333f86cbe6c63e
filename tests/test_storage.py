"""Content store and DuckDB catalog: atomic writes, migrations, provenance."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import duckdb
import pytest

from storage import SCHEMA_VERSION, Catalog, ContentStore
from storage.catalog import MIGRATIONS


def test_store_keeps_each_content_once_read_only(tmp_path: Path):
    store = ContentStore(tmp_path / "store")
    d1 = store.put_bytes(b"abc")
    d2 = store.put_bytes(b"abc")
    assert d1 == d2 and d1.sha256 == hashlib.sha256(b"abc").hexdigest() and d1.md5 == hashlib.md5(b"abc").hexdigest()
    path = store.path(d1.sha256)
    assert path.read_bytes() == b"abc" and path.parent.name == d1.sha256[:2]
    assert not (stat.S_IMODE(os.stat(path).st_mode) & 0o222)  # objects are immutable
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_put_file_copies_without_touching_the_source(tmp_path: Path):
    src = tmp_path / "original.bin"
    src.write_bytes(b"x" * 3_000_000)
    before = (src.stat().st_mtime_ns, src.read_bytes())
    store = ContentStore(tmp_path / "store")
    digest = store.put_file(src)
    assert store.read_bytes(digest.sha256) == src.read_bytes()
    assert (src.stat().st_mtime_ns, src.read_bytes()) == before


def test_put_file_with_wrong_expected_hash_leaves_nothing_behind(tmp_path: Path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"payload")
    store = ContentStore(tmp_path / "store")
    with pytest.raises(OSError, match="does not match"):
        store.put_file(src, expected_sha256="0" * 64)
    assert not store.has(hashlib.sha256(b"payload").hexdigest())
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def _tables(path: Path) -> set[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()


def test_migrations_create_the_schema_in_an_empty_file(tmp_path: Path):
    path = tmp_path / "catalog.duckdb"
    path.write_bytes(b"")  # an empty file, e.g. from `touch`
    with Catalog.open(path) as cat:
        assert cat.version() == SCHEMA_VERSION
    assert {"images", "sources", "derivations", "tags", "runs", "stage_runs", "tag_stats", "skips"} <= _tables(path)


def test_only_pending_migrations_run_and_data_survives(tmp_path: Path):
    path = tmp_path / "catalog.duckdb"
    with Catalog.open(path) as cat:
        cat.add_images([{"hash": "a" * 64, "md5": "b" * 32, "width": 1, "height": 1}])
    later = [*MIGRATIONS, (SCHEMA_VERSION + 1, "ALTER TABLE images ADD COLUMN phash VARCHAR")]
    with Catalog.open(path, migrations=later) as cat:
        assert cat.version() == SCHEMA_VERSION + 1
        assert cat.rows("SELECT hash, phash FROM images") == [{"hash": "a" * 64, "phash": None}]
    with Catalog.open(path, migrations=later) as cat:  # nothing left to apply
        assert cat.migrate(later) == []


def test_a_failing_migration_rolls_back_whole(tmp_path: Path):
    path = tmp_path / "catalog.duckdb"
    broken = [*MIGRATIONS, (SCHEMA_VERSION + 1, "CREATE TABLE extra (x INT); SELECT * FROM no_such_table")]
    with pytest.raises(duckdb.Error):
        with Catalog.open(path, migrations=broken):
            pass
    with Catalog.open(path) as cat:
        assert cat.version() == SCHEMA_VERSION
    assert "extra" not in _tables(path)


def test_provenance_walks_derivations_back_to_the_source(tmp_path: Path):
    orig, png, final = "1" * 64, "2" * 64, "3" * 64
    with Catalog.open(tmp_path) as cat:
        cat.add_images([{"hash": h, "md5": h[:32]} for h in (orig, png, final)])
        cat.add_sources([{"image_hash": orig, "location": "/data/a.gif", "kind": "folder", "name": "a"}], "r1")
        steps = [("convert", orig, png, "0002", {"png_compress_level": 1}), ("alpha", png, final, "", {"bg": "white"})]
        cat.add_derivations(
            [
                {"stage": st, "input_hash": i, "output_hash": o, "output_suffix": suf, "params": p,
                 "params_hash": "p", "code_version": "c"}
                for st, i, o, suf, p in steps
            ],
            "r1",
        )
        chain = cat.provenance(cat.resolve_hash(final[:8]))
        assert chain.origin_hash == orig
        assert [s.stage for s in chain.steps] == ["convert", "alpha"]
        assert chain.steps[0].params == {"png_compress_level": 1} and chain.steps[0].output_suffix == "0002"
        assert [s["location"] for s in chain.sources] == ["/data/a.gif"]
        assert cat.provenance(orig).steps == []
        with pytest.raises(LookupError, match="no image"):
            cat.resolve_hash("ffffff")


def test_rare_tag_counts_come_from_scrape_and_user_counts(tmp_path: Path):
    with Catalog.open(tmp_path) as cat:
        cat.add_tag_counts([{"tag": "a", "posts": 10, "site": "x"}])
        cat.con.execute(
            "INSERT INTO booru_tags VALUES ('s', 'a', 'general', 700, now()), ('s', 'b', 'general', 3, now()),"
            " ('s', 'c', 'general', NULL, now())"
        )
        assert cat.tag_post_counts(["a", "b", "c", "d"]) == {"a": 700, "b": 3}


def test_digest_cache_trusts_unchanged_files_and_rereads_changed_ones(tmp_path: Path):
    from storage.digests import DigestCache

    img, cache_file = tmp_path / "a.png", tmp_path / "cache" / "digests.json"
    img.write_bytes(b"one")
    os.utime(img, (1_600_000_000, 1_600_000_000))  # old: not racy
    cache = DigestCache(cache_file)
    assert cache.digest(img).sha256 == hashlib.sha256(b"one").hexdigest()
    cache.save()
    # A remembered digest is used as long as size, mtime and inode match (here: a planted one).
    entries = json.loads(cache_file.read_text())
    entries[str(img)][3] = "planted"
    cache_file.write_text(json.dumps(entries))
    assert DigestCache(cache_file).digest(img).sha256 == "planted"
    img.write_bytes(b"two")  # new content, new mtime: read again
    assert DigestCache(cache_file).digest(img).sha256 == hashlib.sha256(b"two").hexdigest()
    cache_file.write_text("{broken")
    assert DigestCache(cache_file).digest(img).sha256 == hashlib.sha256(b"two").hexdigest()


def test_sources_replace_in_one_call_keeps_the_last_row_per_key(tmp_path: Path):
    """add_sources writes all rows in one statement: an edited sidecar still replaces the old row,
    and of two rows with one (image, location) key the last wins, as row by row."""
    h = "4" * 64
    row = {"image_hash": h, "location": "/data/a.png", "kind": "folder", "name": "a"}
    with Catalog.open(tmp_path) as cat:
        cat.add_images([{"hash": h, "md5": h[:32]}])
        cat.add_sources([{**row, "sidecar": "old"}], "r1")
        n = cat.add_sources([{**row, "sidecar": "first"}, {**row, "location": "/data/b.png", "sidecar": "b"},
                             {**row, "sidecar": "second"}], "r2")
        got = cat.rows("SELECT location, sidecar, run_id FROM sources ORDER BY location")
    assert n == 3
    assert [(r["location"], r["sidecar"], r["run_id"]) for r in got] == [
        ("/data/a.png", "second", "r2"), ("/data/b.png", "b", "r2")]
