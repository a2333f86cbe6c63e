"""Prepare tasks: dedupe, alpha, trim, upscale, crops, masks, buckets, and their per-image workers."""
