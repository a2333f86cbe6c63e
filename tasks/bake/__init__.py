"""Bake tasks: regularisation, bake."""
