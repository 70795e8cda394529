"""The exception hierarchy of otfparsl.

Every error a user can cause or meet derives from :class:`OtfparslError`. Messages say what was
wrong, the value received, what is allowed and how to fix it.
"""

from __future__ import annotations


class OtfparslError(Exception):
    """Base class of every otfparsl error."""


class ConfigurationError(OtfparslError, ValueError):
    """A setting, input file or structure is invalid."""


class MissingDependencyError(OtfparslError, ImportError):
    """An optional dependency is needed for the requested feature."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the package '{package}', which is not installed. "
            f"Install it with: pip install 'otfparsl[{extra}]'"
        )
        self.package = package
        self.extra = extra


class ModelError(OtfparslError):
    """A model cannot be loaded, or cannot handle the given structure."""


class LabelingFailed(OtfparslError):
    """A reference (DFT) calculation failed.

    Parameters
    ----------
    message
        What failed.
    output
        The code's own output (log text or a path to it), kept for the user.
    """

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class SCFNotConverged(LabelingFailed):
    """The self-consistent field iterations of the reference calculation did not converge."""


class TooManyLabelFailures(OtfparslError):
    """Consecutive DFT failures reached the configured limit; the run stops cleanly."""


class SamplerDiverged(OtfparslError):
    """A Markov chain produced NaN or inf in its weights or its loss."""


class NonFinitePrediction(OtfparslError):
    """The ensemble predicted NaN or inf at an MD step and DFT could not label that step.

    MD cannot continue from a non-finite force, so the run stops; its last checkpoint (before
    that step) stays valid for ``otfparsl resume``.
    """


class SiteError(OtfparslError):
    """A Parsl site profile is missing, malformed or cannot start."""


class DiskFull(OtfparslError, OSError):
    """A run file could not be written: the disk, the quota or the file-size limit is full.

    The message names the file and the free space; what was committed before (the last
    checkpoint) is intact, and the run continues with ``otfparsl resume`` once there is space.
    """
