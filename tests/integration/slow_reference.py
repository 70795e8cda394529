"""A reference calculator that is EMT made slow on purpose (a stand-in for a long DFT call)."""

from __future__ import annotations

import time

from ase.calculators.emt import EMT


class SlowEMT(EMT):
    """EMT that sleeps ``delay_s`` seconds per calculation."""

    def __init__(self, delay_s: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay_s = delay_s

    def calculate(self, *args, **kwargs) -> None:
        time.sleep(self.delay_s)
        super().calculate(*args, **kwargs)
