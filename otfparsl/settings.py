"""Validated settings of a run (the run YAML), as pydantic models.

Every model rejects unknown keys (with a suggestion for a misspelt one), carries a description
and a unit on every field, and defaults to the method's published values (method.md). The core
receives explicit arguments built from these models, never the settings object itself.
"""

from __future__ import annotations

import difflib
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from otfparsl.errors import ConfigurationError
from otfparsl.units import KCAL_PER_MOL_EV


def _not_a_boolean(value: Any) -> Any:
    """Refuse YAML ``true``/``false`` where a number is expected (pydantic would read 1 or 0)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number here; write a number (YAML true is not 1)")
    return value


#: A float setting: finite (YAML ``.inf``/``.nan`` refused) and never a boolean. Not pydantic's
#: ``Strict()``, which would also refuse ``1e-3``: YAML 1.1 (PyYAML) reads it as a string.
FiniteFloat = Annotated[float, BeforeValidator(_not_a_boolean), AllowInfNan(False)]
#: An integer setting that is never a boolean (``n_chains: true`` is refused, not read as 1).
StrictInt = Annotated[int, BeforeValidator(_not_a_boolean)]

#: Characters a run name must not hold: it becomes the folder runs/NAME.
_NAME_FORBIDDEN = ("/", "\\", "\0")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Strict):
    """Which foundation model to fine-tune."""

    family: str = Field(
        "chgnet", description="Model family: one of otfparsl.models.families() (chgnet, mace, ...)."
    )
    source: str = Field(
        "0.3.0",
        description="The family's weights: see `sources` of each family in otfparsl.models.families() "
        "(chgnet '0.3.0' and sevennet '7net-0' ship in their wheels; mace 'mace-mp-0:medium' downloads once). "
        "A relative path to a weights file is relative to the YAML (RunSettings.resolve_paths).",
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="Floating point type.")
    device: str = Field("cpu", description="torch device of the orchestrator's ensemble.")
    chain_device: str = Field("auto", description="torch device of chain updates ('auto': cuda if seen).")
    seed: StrictInt = Field(0, description="Seed of in-process ('tiny') model weights.")


    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        from otfparsl.models import families  # the family modules declare themselves

        if value not in families():
            raise ValueError(f"unknown model family {value!r}; allowed: {', '.join(families())}")
        return value


class BayesSettings(_Strict):
    """Posterior sampling (method.md sections 1-3)."""

    n_chains: StrictInt = Field(8, ge=1, le=64, description="Independent SGHMC chains M.")
    sigma_tl: FiniteFloat | None = Field(None, gt=0, description="Transfer prior width; None: family default.")
    step_size: FiniteFloat | None = Field(None, gt=0, description="gamma_0 of the cosine cycle; None: family default.")
    n_steps: StrictInt = Field(2000, ge=1, description="SGHMC steps per update (one cosine cycle).")
    batch_size: StrictInt = Field(
        5, ge=1, description="Structures per minibatch (>= 2; 1 only with priority 'uniform').",
    )
    noise_off_steps: StrictInt = Field(398, ge=0, description="Steps with zero noise at the start of a cycle.")
    noise_ramp_steps: StrictInt = Field(100, ge=0, description="Steps of the linear 0 -> 1 noise ramp.")
    priority: Literal["unbiased", "original", "uniform"] = Field(
        "unbiased", description="Minibatch rule for the newest structure (original = biased rule of the paper's code)."
    )
    sampler: Literal["flat", "reference"] = Field(
        "flat", description="SGHMC implementation: 'flat' (one weight buffer, analytic prior gradient; "
        "default) or 'reference' (the original's per-tensor update, as before stop 15). Same law; "
        "different random paths from the same seed.",
    )
    gradients: Literal["auto", "compiled", "autograd"] = Field(
        "auto", description="How a chain step computes its gradient: 'compiled' (torch.compile of "
        "torch.func, MACE only; checked against autograd at the first step of every update, "
        "autograd where it fails), 'autograd', or 'auto' (default: compiled for MACE updates of "
        ">= 1000 steps, where the compile time of 1-6 min per worker pays; docs/performance.md section 6). "
        "Same trajectory to rounding.",
    )
    variance_ddof: Annotated[Literal[0, 1], BeforeValidator(_not_a_boolean)] = Field(
        1, description="Divisor of the spread of member means: 1 -> M-1 (default, the original's "
        "torch.var), 0 -> M.",
    )
    seed: StrictInt = Field(0, description="Base seed; chain k uses seed + k.")
    divergence_retries: StrictInt = Field(
        2, ge=0, description="A chain that produces NaN/inf goes back to its previous sample and repeats "
        "the update with half the step size, at most this many times; then the run stops.",
    )

    @model_validator(mode="after")
    def _schedule_fits(self) -> BayesSettings:
        if self.noise_off_steps + self.noise_ramp_steps > self.n_steps:
            raise ValueError(
                f"noise_off_steps + noise_ramp_steps ({self.noise_off_steps} + {self.noise_ramp_steps}) "
                f"exceed n_steps ({self.n_steps}); shorten the noise schedule or run more steps"
            )
        if self.batch_size < 2 and self.priority != "uniform":
            raise ValueError(
                f"batch_size must be >= 2 with priority {self.priority!r} (the newest structure "
                f"takes one draw of the minibatch, the others the rest); got {self.batch_size}. "
                "Set bayes.batch_size: 2 or more (default 5)"
            )
        return self


class CalibrationSettings(_Strict):
    """On-the-fly calibration and the DFT decision (method.md section 5)."""

    energy_threshold_eV: FiniteFloat = Field(
        0.5 * KCAL_PER_MOL_EV, gt=0, description="K: total-structure energy error threshold, eV."
    )
    confidence: FiniteFloat = Field(0.95, description="Call DFT when P(|error| <= K) falls below this.")
    gamma_shape: FiniteFloat | None = Field(None, gt=0, description="a of the Gamma prior; None: family default.")
    gamma_rate: FiniteFloat | None = Field(None, gt=0, description="b of the Gamma prior; None: family default.")
    skip_first_steps: StrictInt = Field(
        3, ge=1, description="Interventions at the first N MD steps of a walker (step 0: the first "
        "label) do not enter the statistics; later ones all count (the original's rule, force calls > 2).",
    )
    ema_decay: FiniteFloat | None = Field(
        None, description="Exponential moving average of z^2 (0 < decay < 1) for drifting miscalibration."
    )
    force_threshold_eV_per_A: FiniteFloat | None = Field(
        None, gt=0, description="Optional per-component force threshold, eV/Å."
    )
    min_counted_interventions: StrictInt = Field(
        0, ge=0, description="Call DFT at every step until this many interventions entered the "
        "calibration, so that no confidence rests on the Gamma prior alone (0: the original method; "
        "see docs/uncertainty.md).",
    )

    @field_validator("confidence")
    @classmethod
    def _confidence_is_probability(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            hint = f" Did you mean {value / 100:g}?" if 1.0 < value < 100.0 else ""
            raise ValueError(f"confidence must be in (0, 1); got {value}.{hint}")
        return value

    @field_validator("ema_decay")
    @classmethod
    def _decay_in_range(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or null; got {value}")
        return value


class LabelerSettings(_Strict):
    """The reference (DFT) calculation."""

    kind: str = Field("pyscf", description="DFT code: one of otfparsl.labelers.kinds() (pyscf, pyscf_pbc, cp2k, vasp, ase).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the labeller (xc, basis, incar, ...)."
    )
    retries: StrictInt | list[dict[str, Any]] = Field(
        1,
        description="Retries of a failed label before the structure is skipped: a number (retry "
        "with the same options) or a list of option overrides, one per retry, e.g. "
        "[{max_cycle: 300}, {max_cycle: 300, level_shift: 0.5}].",
    )
    max_consecutive_failures: StrictInt = Field(3, ge=1, description="Stop cleanly after this many failures in a row.")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from otfparsl.labelers import kinds  # each DFT code's module declares itself

        if value not in kinds():
            raise ValueError(
                f"unknown labeler kind {value!r}; allowed: {', '.join(kinds())} (use 'ase' with "
                "options.name for any other ASE calculator)"
            )
        return value

    @field_validator("retries", mode="before")
    @classmethod
    def _retries_not_boolean(cls, value: Any) -> Any:
        return _not_a_boolean(value)

    @field_validator("retries")
    @classmethod
    def _retries_non_negative(cls, value: int | list[dict[str, Any]]) -> int | list[dict[str, Any]]:
        if isinstance(value, int) and value < 0:
            raise ValueError(f"retries must be >= 0 or a list of option overrides; got {value}")
        return value

    @property
    def n_retries(self) -> int:
        """Number of retries after a failed label."""
        return self.retries if isinstance(self.retries, int) else len(self.retries)

    def attempt_options(self, attempt: int) -> dict[str, Any]:
        """Labeller options of attempt ``attempt`` (0: the first try; k: with the k-th override)."""
        if attempt == 0 or isinstance(self.retries, int):
            return dict(self.options)
        return {**self.options, **self.retries[attempt - 1]}


class SegmentSettings(_Strict):
    """One segment of the temperature programme."""

    ensemble: Literal["langevin", "nve", "npt"] = Field("langevin", description="Dynamics.")
    temperature_K: FiniteFloat = Field(300.0, gt=0, description="Target (or initial, NVE) temperature, K.")
    duration_fs: FiniteFloat = Field(..., gt=0, description="Length of the segment, fs.")
    timestep_fs: FiniteFloat = Field(0.5, gt=0, le=10, description="MD time step, fs.")
    friction_per_fs: FiniteFloat = Field(0.01, gt=0, description="Langevin friction, 1/fs.")
    pressure_bar: FiniteFloat = Field(1.0, description="NPT external pressure, bar.")
    thermostat_time_fs: FiniteFloat = Field(25.0, gt=0, description="NPT thermostat time constant, fs.")
    barostat_time_fs: FiniteFloat = Field(75.0, gt=0, description="NPT barostat time constant, fs.")
    bulk_modulus_GPa: FiniteFloat = Field(100.0, gt=0, description="NPT barostat bulk modulus estimate, GPa.")


class MDSettings(_Strict):
    """The molecular dynamics driven by the on-the-fly calculator."""

    segments: list[SegmentSettings] = Field(..., min_length=1, description="Temperature programme.")
    seed: StrictInt = Field(1, description="Seed of initial velocities and the thermostat.")
    trajectory_interval: StrictInt = Field(10, ge=1, description="Write a frame every N steps.")
    walkers: StrictInt = Field(1, ge=1, le=64, description="Independent MD replicas sharing one ensemble.")
    checkpoint_interval: StrictInt = Field(
        50, ge=1, description="Commit a checkpoint every N MD steps (and after every DFT label)."
    )


class HeldOutSettings(_Strict):
    """In-run held-out DFT checks of the run's claim (otfparsl/learning/heldout.py)."""

    labels: StrictInt = Field(
        20, ge=0, description="Held-out DFT checks per walker: the programme is cut into this many "
        "equal stretches and one MD step drawn at random in each (from md.seed) is labelled, unless "
        "the rule labels it anyway; each is scored against what the run claimed there before "
        "anything else and never trained on; MD keeps the ensemble's prediction. 0: no checks.",
    )
    max_fraction: FiniteFloat = Field(
        0.05, gt=0, le=1, description="At most this fraction of a walker's MD steps is checked: a short "
        "programme gets floor(max_fraction * steps) checks when that is fewer than `labels` (a 16-step "
        "run none, a 600-step run 20), so the checks never turn a run into mostly DFT.",
    )

    def n_checks(self, total_steps: int) -> int:
        """Checks per walker for a programme of ``total_steps`` MD steps after the first."""
        return min(self.labels, math.floor(self.max_fraction * total_steps + 1e-9))


class RunSettings(_Strict):
    """A whole on-the-fly run: what to simulate and how accurately."""

    name: str = Field("run", description="Name of the run (run directory default runs/NAME).")
    structure: str = Field(
        ..., description="Structure file (extxyz, CIF, POSCAR, ...) relative to the YAML; a file "
        "with several frames needs one named: traj.extxyz@-1 (the last) or @N (from 0). Momenta "
        "in the file are the initial velocities.",
    )
    run_dir: str | None = Field(None, description="Run directory; default runs/NAME next to the YAML's cwd.")
    model: ModelSettings = Field(default_factory=ModelSettings)
    bayes: BayesSettings = Field(default_factory=BayesSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    heldout: HeldOutSettings = Field(default_factory=HeldOutSettings)
    labeler: LabelerSettings = Field(default_factory=LabelerSettings)
    md: MDSettings
    analyses: list[str] = Field(
        default_factory=list,
        description="System analyses for the report (otfparsl.analysis.systems), e.g. [ethanol_conformers].",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        bad = [c for c in _NAME_FORBIDDEN if c in value]
        if bad or value in ("", ".", "..") or value != value.strip():
            raise ValueError(
                "must be a plain folder name (the run directory defaults to runs/NAME): not "
                "empty, not '.' or '..', without '/', '\\' or NUL and without leading or "
                "trailing spaces; use e.g. name: water_300K (and run_dir or --run-dir for a path)"
            )
        return value

    @field_validator("analyses")
    @classmethod
    def _known_analyses(cls, value: list[str]) -> list[str]:
        from otfparsl.analysis.systems import analyses  # each analysis module declares itself

        unknown = [name for name in value if name not in analyses()]
        if unknown:
            raise ValueError(f"unknown analysis {unknown[0]!r}; allowed: {', '.join(analyses())}")
        return value

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunSettings:
        """Read and validate a run YAML; relative paths are resolved against its folder."""
        path = Path(path)
        if not path.is_file():
            raise ConfigurationError(f"run file {str(path)!r} does not exist; check the path")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigurationError(
                f"run file {str(path)!r} is not valid YAML{where}: {problem}; fix the syntax "
                "(quote values that contain ':' or '#')"
            ) from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"run file {str(path)!r} must hold a mapping of settings")
        settings = cls.from_dict(data)
        return settings.resolve_paths(path.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSettings:
        """Validate a settings mapping, turning pydantic's errors into one clear message."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(_explain(exc)) from None

    def resolve_paths(self, base: Path) -> RunSettings:
        """Return a copy with relative file paths made absolute against ``base``.

        ``structure`` (a frame selector ``@N`` stays at its end) is always resolved.
        ``model.source`` is resolved only when it names a file: when ``base / source`` is an
        existing file, or when it looks like a path (it holds '/' or '\\', or ends with a
        model-file suffix, one of :data:`MODEL_FILE_SUFFIXES`). Any other source is a family
        keyword ('0.3.0', '7net-0', 'mace-mp-0:medium', 'tiny') and stays as it is, as does an
        absolute path or one starting with '~'.
        """
        structure = Path(self.structure)
        if not structure.is_absolute():
            structure = (base / structure).resolve()
        update: dict[str, Any] = {"structure": str(structure)}
        source = _resolve_model_source(self.model.source, base)
        if source != self.model.source:
            update["model"] = self.model.model_copy(update={"source": source})
        return self.model_copy(update=update)

    def to_yaml(self) -> str:
        """Return the fully resolved settings as YAML text."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


#: Endings of model weight files: a relative ``model.source`` with one of them is a path.
MODEL_FILE_SUFFIXES = (".model", ".pt", ".pth", ".ckpt", ".tar", ".pkl")


def _resolve_model_source(source: str, base: Path) -> str:
    """``source`` made absolute against ``base`` when it names a file (see ``resolve_paths``)."""
    path = Path(source)
    if not source or source.startswith("~") or path.is_absolute():
        return source
    looks_like_path = "/" in source or "\\" in source or source.lower().endswith(MODEL_FILE_SUFFIXES)
    if looks_like_path or (base / path).is_file():
        return str((base / path).resolve())
    return source


def validate_section(model: type[BaseModel], data: Any, source: str) -> Any:
    """Validate one section of settings (e.g. an MD programme file) with RunSettings' messages."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(f"{source}: {_explain(exc, model)}") from None


#: Clearer words for some of pydantic's error types.
_MESSAGES = {
    "finite_number": "must be a finite number; .inf and .nan are not allowed, write a number",
}


def _explain(exc: ValidationError, root: type[BaseModel] | None = None) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key_message(where, root or RunSettings))
        else:
            msg = _MESSAGES.get(err["type"], err["msg"].removeprefix("Value error, "))
            value = err.get("input")
            got = "" if isinstance(value, dict) else f" (got {value!r})"  # a section: too long
            lines.append(f"{where}: {msg}{got}")
    return "; ".join(lines)


def _unknown_key_message(where: str, root: type[BaseModel]) -> str:
    *parents, key = where.split(".")
    model: type[BaseModel] = root
    for part in parents:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        nested = _nested_model(field.annotation) if field is not None else None
        if nested is None:
            break
        model = nested
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else f" Allowed: {', '.join(allowed)}."
    return f"unknown setting {where!r}.{hint}"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None
