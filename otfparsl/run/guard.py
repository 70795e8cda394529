"""What otfparsl may write and delete: a run directory, never the user's other files.

Three rules, each checked before anything is written:

- a run directory is never the current directory, the run YAML's folder or the structure's
  folder, nor an ancestor of any of them (``--run-dir .`` would otherwise mix a run into a
  project, and ``--restart-from-scratch`` would clear it);
- a new run starts only in a new or empty directory, or in one that holds nothing but what a
  run of otfparsl writes (:data:`RUN_ENTRIES`);
- ``--restart-from-scratch`` clears only a directory that holds a run of otfparsl (its
  ``run.yaml`` beside its ``events.jsonl`` or starting structure, and nothing a run does not
  write), and it deletes nothing:
  the old run moves to a dated sibling ``RUN_DIR.trash-YYYYmmdd-HHMMSS`` (:func:`move_to_trash`),
  so one mistyped flag costs disk, not a week of DFT.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import LOCK_NAME, RunDirectory

log = logging.getLogger(__name__)

#: Every name a run of otfparsl writes at the top of its run directory (regular expressions).
RUN_ENTRIES = (
    r"run\.yaml", r"events\.jsonl", r"labels\.extxyz", r"heldout\.extxyz", r"trajectory(_w\d+)?\.extxyz",
    r"calibration\.json", r"chains", r"checkpoint\.json", r"structure\.extxyz", r"dft",
    r"summary\.json", r"audit", r"report", r"analysis", r"md", r"runinfo", re.escape(LOCK_NAME),
    r"\.lock\..*", r"\..+\.tmp",  # the lock's fallback file; an atomic write cut short
)  # fmt: skip
#: Entries kept in place when a run is cleared: Parsl's runinfo/ (a site may be running) and the lock.
KEPT_ON_RESTART = ("runinfo", LOCK_NAME)
_RUN_ENTRY = re.compile("|".join(f"(?:{p})" for p in RUN_ENTRIES))


def foreign_entries(path: Path) -> list[str]:
    """Names in ``path`` that a run of otfparsl does not write (sorted; ``name/`` for folders)."""
    if not path.is_dir():
        return []
    return sorted(
        f"{child.name}/" if child.is_dir() else child.name
        for child in path.iterdir()
        if not _RUN_ENTRY.fullmatch(child.name)
    )


def check_run_dir_location(run_dir: Path, protected: Iterable[Path]) -> None:
    """Refuse a run directory that is, or contains, a place the user works in.

    Parameters
    ----------
    run_dir
        The run directory (need not exist).
    protected
        Paths that must stay outside the run directory: the current directory, the run YAML,
        the structure file. A folder is protected itself and so are its ancestors' claims:
        ``run_dir`` may not equal it or be an ancestor of it.
    """
    target = run_dir.resolve()
    for place in protected:
        place = place.resolve()
        if place == target or target in place.parents:
            what = "the current directory" if place == Path.cwd().resolve() else repr(str(place))
            raise ConfigurationError(
                f"run directory {str(run_dir)!r} is or contains {what}; a run writes and, with "
                "--restart-from-scratch, clears its whole directory, so it must be a folder of its "
                "own: choose another --run-dir (default runs/NAME) or run.yaml's run_dir"
            )


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse to start a new run in a directory that holds files otfparsl did not write."""
    foreign = foreign_entries(run_dir)
    if foreign:
        raise ConfigurationError(
            f"run directory {str(run_dir)!r} already holds files that are not a run of otfparsl "
            f"({_listing(foreign)}); a new run needs a new or empty directory: choose another "
            "--run-dir, or move those files out"
        )


def check_restartable(run_dir: Path) -> None:
    """Refuse ``--restart-from-scratch`` on a directory that does not hold a run of otfparsl.

    A missing or empty directory (Parsl's ``runinfo/`` and the lock aside) is fine: nothing is
    cleared.
    """
    if not run_dir.is_dir():
        return
    present = [p.name for p in run_dir.iterdir() if p.name not in KEPT_ON_RESTART]
    if not present:
        return
    rd = RunDirectory(run_dir)
    foreign = foreign_entries(run_dir)
    started = rd.events.is_file() or (rd.path / "structure.extxyz").is_file()
    if not (rd.run_yaml.is_file() and started):
        shown = foreign or sorted(present)
        raise ConfigurationError(
            f"--restart-from-scratch refused: {str(run_dir)!r} does not hold a run of otfparsl (no "
            f"run.yaml with events.jsonl or structure.extxyz; it holds {_listing(shown)}); it "
            "clears only run directories: choose a new --run-dir"
        )
    if foreign:
        raise ConfigurationError(
            f"--restart-from-scratch refused: run directory {str(run_dir)!r} also holds files "
            f"otfparsl did not write ({_listing(foreign)}); move them out, then start over"
        )


def move_to_trash(run_dir: Path, now: datetime | None = None) -> Path | None:
    """Move the run in ``run_dir`` to a dated sibling folder; return it (None: nothing to move).

    Everything but :data:`KEPT_ON_RESTART` moves by ``os.rename`` (one file system, no copy);
    call :func:`check_restartable` first. Raises a ConfigurationError, having moved nothing
    more, when the sibling cannot be made.
    """
    entries = [p for p in run_dir.iterdir() if p.name not in KEPT_ON_RESTART] if run_dir.is_dir() else []
    if not entries:
        return None
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    trash = run_dir.with_name(f"{run_dir.name}.trash-{stamp}")
    suffix = 1
    while trash.exists():
        trash, suffix = run_dir.with_name(f"{run_dir.name}.trash-{stamp}-{suffix}"), suffix + 1
    try:
        trash.mkdir()
        for entry in entries:
            os.rename(entry, trash / entry.name)
    except OSError as exc:
        raise ConfigurationError(
            f"--restart-from-scratch could not move the old run of {str(run_dir)!r} to "
            f"{str(trash)!r} ({exc.strerror}); nothing was deleted: move or delete the old run "
            "yourself, then start again"
        ) from None
    log.warning("the previous run of %s was moved to %s; delete that folder once you no longer need it", run_dir, trash)
    return trash


def _listing(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
