"""Independent test oracle for PuLID-FLUX: the official formulas in BFL layout (tiny twin)."""
