"""Prepare: dedupe, alpha, trim, upscale, framing (detectors and face crops), masks, buckets (rules.md §2-§7)."""
