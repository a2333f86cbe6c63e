"""Slider tasks: slide and the slider taste."""
