"""Gather tasks: scrape, ingest, convert."""
