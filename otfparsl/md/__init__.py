"""Molecular dynamics from explicit parameters, and temperature programmes."""

from __future__ import annotations

from otfparsl.md.dynamics import ENSEMBLES, Segment, make_dynamics, target_temperature_K
from otfparsl.md.programme import TemperatureProgramme, segment_seed

__all__ = [
    "ENSEMBLES",
    "Segment",
    "TemperatureProgramme",
    "make_dynamics",
    "segment_seed",
    "target_temperature_K",
]
