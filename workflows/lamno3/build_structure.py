"""Write lamno3_2x2x2.extxyz: Pbnm LaMnO3 (Rodriguez-Carvajal et al. 1998), 2x2x2 pseudo-cubic.

Usage: ``python workflows/lamno3/build_structure.py [OUTPUT]`` (default: next to this file);
``--small [OUTPUT]`` writes the 20-atom Pbnm cell of ``run_small.yaml`` (lamno3_pbnm.extxyz).
The structure is built by :func:`otfparsl.analysis.systems._lamno3_structure.write_lamno3_structure`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from otfparsl.analysis.systems._lamno3_structure import write_lamno3_structure

if __name__ == "__main__":
    args = sys.argv[1:]
    small = "--small" in args
    args = [a for a in args if a != "--small"]
    default = "lamno3_pbnm.extxyz" if small else "lamno3_2x2x2.extxyz"
    target = Path(args[0]) if args else Path(__file__).with_name(default)
    sys.stdout.write(f"wrote {write_lamno3_structure(target, small=small)}\n")
