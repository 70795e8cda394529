"""Molecular dynamics from explicit parameters, and temperature programmes."""

from __future__ import annotations

from otfparsl.md.dynamics import ENSEMBLES, Segment, make_dynamics, target_temperature_K
from otfparsl.md.programme import TemperatureProgramme, segment_seed
from otfparsl.md.state import capture_md_state, restore_md_state

__all__ = [
    "ENSEMBLES",
    "Segment",
    "TemperatureProgramme",
    "capture_md_state",
    "make_dynamics",
    "restore_md_state",
    "segment_seed",
    "target_temperature_K",
]
