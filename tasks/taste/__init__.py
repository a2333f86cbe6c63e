"""Taste tasks: trigger_check (before the bake), evaluate (after it)."""
