"""The ``otfparsl`` command: run, resume, validate, audit, md, report, unlock, sites check."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from otfparsl.errors import OtfparslError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="On-the-fly Bayesian fine-tuning of foundation potentials.")
sites_app = typer.Typer(no_args_is_help=True, help="Parsl site profiles.")
app.add_typer(sites_app, name="sites")
console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """On-the-fly Bayesian fine-tuning of foundation interatomic potentials."""
    _state["debug"] = debug
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # Parsl sets its own loggers to DEBUG; keep them in runinfo/


@contextlib.contextmanager
def _user_errors():
    """Turn otfparsl errors, and a full disk anywhere, into one clear line (traceback only with --debug)."""
    from otfparsl.fileio import FULL_ERRNOS, disk_full_error

    try:
        yield
    except (OtfparslError, OSError) as caught:
        if _state["debug"] or (not isinstance(caught, OtfparslError) and caught.errno not in FULL_ERRNOS):
            raise
        exc = caught if isinstance(caught, OtfparslError) else disk_full_error(caught.filename, caught)
        message = " ".join(str(exc).split())  # one line, whatever the library's message looked like
        console.print(f"[bold red]error:[/] {type(exc).__name__}: {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def validate(
    run_yaml: Annotated[Path, typer.Argument(help="The run YAML.")],
    dft_env: Annotated[
        bool,
        typer.Option(help="Also check the labeller's environment (DFT command, POTCARs, packages) on this machine."),
    ] = True,
) -> None:
    """Check a run YAML and its inputs (structure, model, MD, labeller); print the resolved settings."""
    from otfparsl.errors import ConfigurationError
    from otfparsl.preflight import check_labeler_environments, check_run
    from otfparsl.settings import RunSettings

    with _user_errors():
        settings = RunSettings.from_yaml(run_yaml)
        atoms = check_run(settings)
        if dft_env:
            try:
                check_labeler_environments(settings.labeler, atoms.get_chemical_symbols())
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"{exc} (DFT environment checked on this machine; where the DFT runs elsewhere, "
                    "validate with --no-dft-env and run 'otfparsl sites check')"
                ) from exc
    typer.echo(settings.to_yaml())
    checked = "checked here" if dft_env else "not checked (--no-dft-env)"
    console.print(
        f"[green]valid[/]: {len(atoms)} atoms ({atoms.get_chemical_formula()}), periodic={bool(atoms.pbc.all())}; "
        f"DFT environment {checked}"
    )


@app.command()
def run(
    run_yaml: Annotated[Path, typer.Argument(help="The run YAML.")],
    site: Annotated[Path | None, typer.Option(help="Parsl site profile (sites/X.py); default: this machine (chain worker processes, DFT in a thread).")] = None,
    site_option: Annotated[list[str] | None, typer.Option("--site-option", help="key=value for the site profile.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default runs/NAME).")] = None,
    restart_from_scratch: Annotated[bool, typer.Option(help="Start over: move an existing run in the run directory to RUN_DIR.trash-DATE first (only a run directory is accepted).")] = False,
) -> None:
    """Run on-the-fly fine-tuning MD as RUN_YAML says (an existing run in the run directory is resumed)."""
    from otfparsl.preflight import check_run, check_run_dir_writable
    from otfparsl.run.directory import RunDirectory
    from otfparsl.settings import RunSettings
    from otfparsl.workflow.driver import check_run_dir, check_same_run, default_run_dir
    from otfparsl.workflow.driver import run as run_otf

    with _user_errors():
        settings = RunSettings.from_yaml(run_yaml)
        target = run_dir or default_run_dir(settings)
        check_run_dir_writable(target)  # permissions and free space, before anything starts
        check_run_dir(target, settings, restart_from_scratch, run_yaml=run_yaml)  # never the user's files
        atoms = check_run(settings.resolve_paths(Path.cwd()))  # before anything starts or is written
        resuming = (target / "run.yaml").is_file() and not restart_from_scratch
        if resuming:
            check_same_run(RunDirectory(target), settings.resolve_paths(Path.cwd()), atoms)
        with _ReportOnExit(target) as report:
            with _submitter(site, site_option or [], target, "run") as submitter, _progress(settings) as on_step:
                report.arm()
                if resuming:
                    console.print(f"resuming the run in {target} from its last checkpoint (--restart-from-scratch starts over)")
                result = run_otf(settings, submitter=submitter, run_dir=target, restart_from_scratch=restart_from_scratch, on_step=on_step)
    _print_summary(result.as_dict())


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of an interrupted run.")],
    site: Annotated[Path | None, typer.Option(help="Parsl site profile (sites/X.py); default: this machine (chain worker processes, DFT in a thread).")] = None,
    site_option: Annotated[list[str] | None, typer.Option("--site-option", help="key=value for the site profile.")] = None,
) -> None:
    """Continue an interrupted run from its last checkpoint (RUN_DIR/checkpoint.json)."""
    from otfparsl.workflow.driver import resume as resume_otf

    with _user_errors():
        settings = _saved_settings(run_dir)
        with _ReportOnExit(run_dir) as report:
            with _submitter(site, site_option or [], run_dir, "resume") as submitter, _progress(settings) as on_step:
                report.arm()
                result = resume_otf(run_dir, submitter=submitter, on_step=on_step)
    _print_summary(result.as_dict())


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    frames: Annotated[int, typer.Option(help="Held-out (never labelled) trajectory frames to label with DFT.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the frame selection.")] = 0,
    site: Annotated[Path | None, typer.Option(help="Parsl site profile (sites/X.py); default: this machine (chain worker processes, DFT in a thread).")] = None,
    site_option: Annotated[list[str] | None, typer.Option("--site-option", help="key=value for the site profile.")] = None,
) -> None:
    """Measure a run's real accuracy: DFT on held-out frames vs what the run predicted there."""
    from otfparsl.audit import audit_run
    from otfparsl.workflow.tasks import label_structure

    with _user_errors():
        settings = _saved_settings(run_dir)
        kind, options = settings.labeler.kind, settings.labeler.attempt_options(0)
        with _submitter(site, site_option or [], run_dir, "audit") as submitter:
            result = audit_run(
                run_dir, lambda atoms, workdir: submitter.submit("dft", label_structure, atoms, kind, options, workdir),
                n_frames=frames, seed=seed,
            )
    _print_audit(result)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    pretrained: Annotated[
        bool, typer.Option(help="Evaluate the pretrained model at the labelled structures (its error there).")
    ] = True,
) -> None:
    """Write the run's report, RUN_DIR/report/index.html (one page, figures embedded; open it in a browser)."""
    from otfparsl.analysis.report import write_report

    with _user_errors():
        index = write_report(run_dir, compare_pretrained=pretrained)
    console.print(f"report written: {index}")


@app.command()
def unlock(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    force: Annotated[
        bool, typer.Option("--force", help="Remove the lock file and its holder's record (refused while its process runs).")
    ] = False,
) -> None:
    """Show who holds a run directory's lock; with --force, remove a lock left by a job that has ended."""
    from otfparsl.errors import ConfigurationError
    from otfparsl.run.lock import force_unlock, lock_status

    where = repr(str(run_dir))
    with _user_errors():
        if not run_dir.is_dir():
            raise ConfigurationError(f"run directory {where} does not exist or is not a directory; give the run directory whose lock to show")
        status = force_unlock(run_dir) if force else lock_status(run_dir)
    if status is None:
        typer.echo(f"run directory {where} is not locked: nothing to do")
    elif force:
        console.print(
            f"[bold yellow]warning:[/] removed the lock of run directory {where}, held by {status.holder_text()}; "
            "if that process still runs, it and the next command will both write this run directory",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
    else:
        typer.echo(f"run directory {where} is locked by {status.holder_text()}")
        typer.echo(_unlock_advice(status, run_dir))


def _unlock_advice(status, run_dir: Path) -> str:
    """What ``otfparsl unlock`` without --force says about a lock (a :class:`LockStatus`)."""
    import shlex

    from otfparsl.run.lock import this_host

    force = f"`otfparsl unlock {shlex.quote(str(run_dir))} --force`"
    holder = status.holder
    if status.alive and holder is not None and holder.host == this_host():
        return f"pid {holder.pid} on this host is running: stop it first ({force} refuses while it runs)"
    if status.alive:
        return f"a running process holds the lock: stop it first ({force} refuses while it is held)"
    if status.alive is False:
        return (f"that process is no longer running: the next command on this run directory takes the lock over "
                f"by itself (with a warning); {force} would remove it now")  # fmt: skip
    why = "its record is unreadable" if holder is None else f"this host ({this_host()}) cannot tell whether that process still runs"
    return (f"{why}: once you are sure that job has ended (e.g. with `squeue` or `sacct`), {force} removes the "
            "lock file and its record, and the next command takes the run directory")  # fmt: skip


class _ReportOnExit:
    """Write the run's report when a command ends, however it ends (done, error, Ctrl-C).

    Armed once the command holds the run directory (a command refused at the start, e.g. by
    another process's lock, writes nothing). A report that fails is logged, never raised, so it
    cannot hide the run's own outcome.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.armed = False

    def arm(self) -> None:
        """The command has started on the run directory: write the report at the end."""
        self.armed = True

    def __enter__(self) -> _ReportOnExit:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.armed and (self.run_dir / "events.jsonl").is_file():
            _write_report_quietly(self.run_dir)


def _write_report_quietly(run_dir: Path) -> None:
    from otfparsl.analysis.report import write_report

    try:
        index = write_report(run_dir)
    except Exception as exc:  # the run's own outcome comes first
        logging.getLogger(__name__).warning("the report of %s was not written: %s: %s", run_dir, type(exc).__name__, exc)
        message = " ".join(str(exc).split())
        console.print(f"[yellow]report not written[/]: {type(exc).__name__}: {message}", highlight=False, soft_wrap=True)
        return
    console.print(f"report written: {index}", highlight=False)


@app.command()
def md(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (its final ensemble and calibration are used).")],
    programme_file: Annotated[Path | None, typer.Option("--programme", help="YAML with the MD segments (as a run YAML's md section); default: the run's own programme.")] = None,
    temperature_K: Annotated[float | None, typer.Option("--temperature-K", help="One segment at this temperature (with --duration-fs) instead of a programme.")] = None,
    duration_fs: Annotated[float | None, typer.Option("--duration-fs", help="Length of that segment, fs.")] = None,
    ensemble: Annotated[str, typer.Option(help="Dynamics of that segment: langevin, nve or npt.")] = "langevin",
    timestep_fs: Annotated[float, typer.Option("--timestep-fs", help="Time step of that segment, fs.")] = 0.5,
    runs: Annotated[int, typer.Option(help="Independent runs (seeds SEED, SEED+1, ...).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the first run.")] = 0,
    name: Annotated[str, typer.Option(help="The runs go to RUN_DIR/md/NAME_seedS/.")] = "production",
    start: Annotated[str, typer.Option(help="'last' (the run's last frame), 'initial', or a structure file.")] = "last",
    trajectory_interval: Annotated[int | None, typer.Option(help="Write a frame every N steps (default: the run's).")] = None,
) -> None:
    """Production MD with the fine-tuned ensemble frozen (no DFT); warns where it leaves the run's promise."""
    from otfparsl.production import production_md, programme_from_yaml
    from otfparsl.settings import validate_section

    with _user_errors():
        settings = _saved_settings(run_dir)
        base = settings.md.model_dump(mode="json")
        if trajectory_interval is not None:
            base["trajectory_interval"] = trajectory_interval
        md_settings = validate_section(type(settings.md), base, "md")
        if temperature_K is not None or duration_fs is not None:
            if programme_file is not None or temperature_K is None or duration_fs is None:
                from otfparsl.errors import ConfigurationError

                raise ConfigurationError("give either --programme FILE or both --temperature-K and --duration-fs")
            segment = {"ensemble": ensemble, "temperature_K": temperature_K, "duration_fs": duration_fs, "timestep_fs": timestep_fs}
            md_settings = validate_section(type(settings.md), {**base, "segments": [segment]}, "command line")
        elif programme_file is not None:
            md_settings = programme_from_yaml(programme_file, md_settings)
        summary = production_md(run_dir, md_settings, [seed + k for k in range(runs)], name=name, start=start)
    _print_production(summary)


def _print_production(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"otfparsl md: {len(summary['runs'])} run(s), confidence level {summary['confidence_level']:.2f}")
    for column in ("seed", "steps", "steps below level", "stretches", "min confidence", "wall (s)", "D (cm²/s) per element"):
        table.add_column(column, justify="right")
    for run in summary["runs"]:
        diffusion = ", ".join(f"{el} {m['D_cm2_per_s']:.2e}" for el, m in run["msd"].items()) or "-"
        table.add_row(str(run["seed"]), str(run["n_steps"]), str(run["steps_below_level"]), str(run["stretches_below_level"]),
                      f"{run['min_confidence']:.3f}", f"{run['wall_s']:.1f}", diffusion)  # fmt: skip
    Console().print(table)
    Console().print("D: Einstein fit MSD = 6 D t on the second half of the lags of each run's trajectory frames; "
                    "steps below level are outside the run's accuracy promise. Written: RUN_DIR/md/")


@sites_app.command("check")
def sites_check(
    site: Annotated[Path, typer.Argument(help="Site profile sites/X.py.")],
    site_option: Annotated[list[str] | None, typer.Option("--site-option", help="key=value for the site profile.")] = None,
    run_dir: Annotated[Path, typer.Option(help="Where Parsl writes runinfo.")] = Path("runs/site-check"),
    timeout_s: Annotated[float, typer.Option(help="Give up after this many seconds per role.")] = 600.0,
) -> None:
    """Start a site profile, run one no-op task per role, and report what each found."""
    from otfparsl.workflow.site import check_site, format_report
    from otfparsl.workflow.site_options import parse_site_options

    with _user_errors():
        reports = check_site(site, run_dir, parse_site_options(site_option or []), timeout_s=timeout_s)
    for line in format_report(reports):
        typer.echo(line)


def _saved_settings(run_dir: Path):
    """The settings of the run in ``run_dir`` (its run.yaml), or a one-line error."""
    from otfparsl.errors import ConfigurationError
    from otfparsl.settings import RunSettings

    if not (run_dir / "run.yaml").is_file():
        raise ConfigurationError(f"{str(run_dir)!r} holds no run (no run.yaml); start one with `otfparsl run RUN.yaml`")
    return RunSettings.from_yaml(run_dir / "run.yaml")


@contextlib.contextmanager
def _submitter(site: Path | None, options: list[str], run_dir: Path, command: str):
    """Chain worker processes and thread pools (:func:`local_submitter`) or the Parsl site,
    inside the run directory's lock.

    The lock is taken before a site starts (it writes runinfo/ and may submit jobs), so a second
    command on the same directory fails at once; the driver takes it again (re-entrant). A run
    directory that does not exist yet is locked by the driver once the run's checks pass.
    """
    from otfparsl.run.lock import run_lock
    from otfparsl.workflow.submit import local_submitter

    lock = run_lock(run_dir, f"otfparsl {command} {run_dir}") if run_dir.is_dir() else contextlib.nullcontext()
    with lock:
        if site is None:
            with local_submitter(chain_workers=min(8, os.cpu_count() or 1)) as submitter:
                yield submitter
            return
        from otfparsl.workflow.site import open_site
        from otfparsl.workflow.site_options import parse_site_options

        with open_site(site, run_dir, parse_site_options(options)) as loaded:
            yield loaded


@contextlib.contextmanager
def _progress(settings):
    from otfparsl.from_settings import programme

    total = settings.md.walkers * (programme(settings.md).total_steps + 1)
    columns = (
        TextColumn("[bold]MD"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )  # fmt: skip
    with Progress(*columns, console=console, disable=not sys.stderr.isatty() and "OTFPARSL_PROGRESS" not in os.environ) as progress:
        task = progress.add_task("md", total=total, status="starting")

        done: dict[int, int] = {}

        def on_step(info) -> None:
            done[info.walker] = info.step + 1  # a resumed run starts where it stopped
            status = (
                f"t={info.time_fs:7.1f} fs  T={info.temperature_K:6.1f} K  DFT={info.n_labels:3d}  "
                f"conf={info.confidence:.3f}  gen={info.generation}  "
                f"held-out: {info.heldout_above} of {info.heldout_checked} above K"
            )
            progress.update(task, completed=sum(done.values()), status=status)

        yield on_step


def _print_audit(result: dict) -> None:
    from rich.table import Table

    preds = result["predictions"]
    k = result["threshold_eV"]
    table = Table(title=f"otfparsl audit: {preds['recorded']['n_frames']} held-out frames vs DFT (K = {k:.4g} eV)")
    table.add_column("")
    for title in ("during the run", "final ensemble", "pretrained"):
        table.add_column(title, justify="right")

    def above(m: dict) -> str:
        low, high = m["fraction_above_threshold_ci95"]
        return f"{m['n_above_threshold']} of {m['n_frames']} ({low:.2f}-{high:.2f})"

    def auc(m: dict) -> str:
        if "auc_roc_std" in m and m["auc_roc_std"] is None:
            return "n/a (all frames on one side of K)"
        return _opt(m.get("auc_roc_std"), "{:.2f}")

    rows = [
        ("|E err| > K (95% CI)", above),
        ("E RMSE / MAE (eV)", lambda m: f"{m['energy_rmse_eV']:.4f} / {m['energy_mae_eV']:.4f}"),
        ("max |E err| (eV)", lambda m: f"{m['energy_max_abs_error_eV']:.4f}"),
        ("F RMSE (eV/Å)", lambda m: f"{m['forces_rmse_eV_per_A']:.4f}"),
        ("rms z (calibrated)", lambda m: _opt(m.get("rms_z_calibrated"), "{:.2f}")),
        ("rms z (ensemble std)", lambda m: _opt(m.get("rms_z_ensemble"), "{:.2f}")),
        ("coverage of 95% interval", lambda m: _opt(m.get("coverage_95"), "{:.2f}")),
        ("mean log-likelihood", lambda m: _opt(m.get("mll_student_t"), "{:.2f}")),
        ("AUC-ROC of std for > K", auc),
        ("mean claimed confidence", lambda m: _opt(m.get("mean_confidence"), "{:.3f}")),
    ]  # fmt: skip
    for name, cell in rows:
        table.add_row(name, *(cell(preds[p]) for p in ("recorded", "final", "pretrained")))
    Console().print(table)
    from otfparsl.analysis.metrics import audit_verdict

    verdict = audit_verdict(preds["recorded"], result["confidence_level"])
    Console().print(
        f"The run claimed P(|error| > K) < {verdict.promise:.0%} at every step it did not label. {verdict.sentence()} "
        "rms z: error / the calibrated scale the run used (about 1 when honest, above 1 overconfident). "
        f"Written: {Path(result['run_dir']) / 'audit'}"
    )


def _opt(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _heldout_line(checks: dict) -> str:
    """The run's own held-out checks in one line (summary.json's ``heldout_in_run``)."""
    if not checks.get("frames"):
        return "no held-out check made (heldout.labels: 0, or the run ended before the first)"
    low, high = checks["fraction_above_threshold_ci95"]
    return (
        f"{checks['above_threshold']} of {checks['frames']} in-run held-out checks above K (95% CI "
        f"{low:.2f}-{high:.2f}), rms z {checks['rms_z_calibrated']:.2f}, coverage {checks['coverage_95']:.2f}: "
        f"{checks['verdict']}"
    )


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title="otfparsl run", show_header=False)
    checked = summary["interventions_checked"]
    low, high = summary["fraction_above_threshold_ci95"]
    for key, value in summary.items():
        if key == "fraction_above_threshold_ci95":
            continue
        if key == "heldout_in_run":
            value = _heldout_line(value)
        if key == "heldout_audit" and isinstance(value, dict):
            value = f"{value['above_threshold']} of {value['frames']} held-out frames above K: {value['verdict']}"
        if key == "fraction_above_threshold":
            value = (
                f"{summary['interventions_above_threshold']} of {checked} checked interventions "
                f"(95% CI {low:.2f}-{high:.2f}); not a held-out measure" if checked else "no intervention checked yet"
            )
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)
    if summary.get("calibration_basis", "").startswith("prior only"):
        console.print(
            "[bold yellow]warning:[/] no intervention entered the calibration: the run's confidence rests on "
            f"its prior alone. Check it against DFT: otfparsl audit {summary['run_dir']}", highlight=False,
        )


if __name__ == "__main__":  # pragma: no cover
    app()
