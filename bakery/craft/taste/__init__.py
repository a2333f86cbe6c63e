"""Taste: render the epoch x weight grid, judge it, rank it, report it; the trigger check before a bake (rules.md §10, §13)."""
