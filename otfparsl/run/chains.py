"""Chain files in the run directory: where they live, their previous and next versions, samples.

``chains/chain_K.pt`` holds chain K's latest sample and sampler state; ``chain_K.prev.pt`` (a
hard link where the file system allows it) the one before its latest update, so a resumed run
can go back to its checkpoint's generation; ``chain_K.next.pt`` an update made after the last
checkpoint, reused when the resumed run repeats it with the same labels. No Parsl, no training.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from otfparsl.bayes.chain import load_sample, read_chain_header
from otfparsl.errors import ConfigurationError
from otfparsl.fileio import fsync_dir, fsync_path

log = logging.getLogger(__name__)


def chain_path(chains_dir: str | os.PathLike, index: int) -> Path:
    """Return the file of chain ``index``."""
    return Path(chains_dir) / f"chain_{index}.pt"


def previous_path(path: str | os.PathLike) -> Path:
    """``chain_K.prev.pt``: the chain file before its latest update."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev.pt")


def next_path(path: str | os.PathLike) -> Path:
    """``chain_K.next.pt``: an update made after the last checkpoint, kept for reuse on resume."""
    path = Path(path)
    return path.with_name(f"{path.stem}.next.pt")


def _matches(path: Path, generation: int, inputs: dict) -> dict | None:
    if not path.is_file():
        return None
    header = read_chain_header(path)
    meta = header["meta"]
    same = all(meta.get(k) == v for k, v in inputs.items())
    return meta.get("stats") if header["n_updates"] == generation and same and "stats" in meta else None


def find_done_update(path: Path, generation: int, inputs: dict) -> dict | None:
    done = _matches(path, generation, inputs)
    if done is not None:
        log.info("chain file %s is already at update %d with these labels; not recomputed", path, generation)
        return done
    candidate = next_path(path)
    done = _matches(candidate, generation, inputs)
    if done is not None and read_chain_header(path)["n_updates"] == generation - 1:
        keep_previous(path)
        os.replace(candidate, path)
        fsync_dir(path.parent)
        log.info("reused the update %d of %s made before the run was interrupted", generation, path)
    return done


def keep_previous(path: Path) -> None:
    target = previous_path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this file system: copy
        shutil.copyfile(path, tmp)
        fsync_path(tmp)
    os.replace(tmp, target)  # the folder is fsynced by the chain file's atomic write that follows


def restore_chain_generation(paths: Sequence[str | os.PathLike], generation: int) -> None:
    """Put every chain file back at update ``generation`` (the checkpoint's), for a resume.

    A chain already updated past the checkpoint is moved to ``chain_K.next.pt`` (the resumed
    run reuses it when it repeats that update with the same labels) and its
    ``chain_K.prev.pt`` takes its place.

    Raises
    ------
    ConfigurationError
        If neither file of a chain is at ``generation``.

    Notes
    -----
    The copies are fsynced before their renames and the folder after them, so the restored
    generation is on the disk before the resumed run goes on from it.
    """
    restored: set[Path] = set()
    for path in map(Path, paths):
        previous = previous_path(path)
        n_updates = read_chain_header(path)["n_updates"] if path.is_file() else None
        if n_updates == generation:
            continue
        if n_updates in (None, generation + 1) and previous.is_file() and read_chain_header(previous)["n_updates"] == generation:
            tmp = path.with_name(f".{path.name}.restore")
            shutil.copyfile(previous, tmp)
            fsync_path(tmp)
            if n_updates is not None:
                os.replace(path, next_path(path))
            os.replace(tmp, path)
            restored.add(path.parent)
            log.warning("chain %s was updated after the last checkpoint: restored update %d", path, generation)
            continue
        raise ConfigurationError(
            f"chain file {path} is at update {n_updates} and cannot be brought back to the "
            f"checkpoint's update {generation}; the run directory was changed by hand or by "
            "another program. Restart the run with --restart-from-scratch."
        )
    for folder in restored:
        fsync_dir(folder)


def load_samples(paths: Sequence[str | os.PathLike]) -> list[dict[str, torch.Tensor]]:
    """Read the current weight sample of each chain file (CPU tensors)."""
    return [load_sample(p) for p in paths]
