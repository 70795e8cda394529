"""Write lamno3_2x2x2.extxyz: Pbnm LaMnO3 (Rodriguez-Carvajal et al. 1998), 2x2x2 pseudo-cubic.

Usage: ``python workflows/lamno3/build_structure.py [OUTPUT]`` (default: next to this file).
The structure is built by :func:`otfparsl.analysis.systems._lamno3_structure.write_lamno3_structure`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from otfparsl.analysis.systems._lamno3_structure import write_lamno3_structure

if __name__ == "__main__":
    target = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("lamno3_2x2x2.extxyz")
    )
    sys.stdout.write(f"wrote {write_lamno3_structure(target)}\n")
