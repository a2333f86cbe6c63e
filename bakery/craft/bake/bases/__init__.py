"""Base models behind the bake's seam (family.py; SD1.5, SDXL): loading, checkpoint kinds, prediction types."""
