"""EMT as the 'DFT' code of a test run, with a hook that acts on one label before it is computed.

The ``ase`` labeller builds the calculator with ``directory=`` its label directory
(``label_NNNNN``); a subclass's :meth:`LabelEMT.before_label` sees that directory and may hold,
kill or mark the run there.
"""

from __future__ import annotations

from pathlib import Path

from ase.calculators.emt import EMT


class LabelEMT(EMT):
    """EMT that calls :meth:`before_label` with its label directory before each calculation."""

    def __init__(self, directory: str = ".", **kwargs) -> None:
        super().__init__(**kwargs)
        self.workdir = Path(directory)

    def before_label(self, workdir: Path) -> None:
        """What to do in ``workdir`` before the label is computed (nothing here)."""

    def calculate(self, *args, **kwargs) -> None:
        self.before_label(self.workdir)
        super().calculate(*args, **kwargs)
