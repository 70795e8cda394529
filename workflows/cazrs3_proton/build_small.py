"""Write cazrs3_h_small.extxyz: the paper's POSCAR folded into one Pnma cell with one proton.

Usage: ``python workflows/cazrs3_proton/build_small.py [OUTPUT]`` (default: next to this file).
The cell is built by :func:`otfparsl.analysis.systems._cazrs3_structure.cazrs3_proton_cell`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from otfparsl.analysis.systems._cazrs3_structure import write_cazrs3_proton_cell

if __name__ == "__main__":
    here = Path(__file__).parent
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "cazrs3_h_small.extxyz"
    sys.stdout.write(f"wrote {write_cazrs3_proton_cell(here / 'POSCAR', target)}\n")
