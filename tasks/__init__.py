"""Prefect tasks: thin wrappers that call the craft functions and write the catalog."""
