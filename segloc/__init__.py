"""Shared core of the SegLoc pipeline: params loading, user errors, atomic files, COCO and image I/O.

Everything stage-specific lives in `synth`, `train` and `eval`; this package holds only what more
than one stage reads (the params file, the labeled COCO set, input images).
"""
