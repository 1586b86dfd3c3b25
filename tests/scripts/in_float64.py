"""Run a script with float64 as torch's default dtype: ``python in_float64.py SCRIPT [ARGS...]``.

Parity tests compare 1 and 2 processes in float64, where rounding (~1e-16) stays far below any tolerance even after
Adam divides a near-zero gradient by its own tiny scale; in float32 that amplification moves single elements by
~1e-4, which hides nothing about the distributed logic and tells nothing either.
"""

import os
import runpy
import sys

import torch

if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as `python SCRIPT` would
    runpy.run_path(sys.argv[0], run_name="__main__")
