"""Judges: tag judges (identity, concept bleed, flexibility, seed effect), the face judge, likeness; the panel runs them all."""
