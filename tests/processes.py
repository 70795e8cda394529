"""Which processes still run, read from /proc (Linux): for the tests that stop a run's workers.

A process that exited but was not reaped yet is a zombie: not running. Importable from every
test folder (pytest puts ``tests/`` on ``sys.path`` for its ``conftest.py``).
"""

from __future__ import annotations

from pathlib import Path


def _state_and_group(pid_dir: Path) -> tuple[str, int] | None:
    """``(state, process group)`` of the process in ``/proc/PID``; None when it is gone."""
    try:
        fields = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # it ended meanwhile
        return None
    return fields[0], int(fields[2])


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs."""
    found = _state_and_group(Path(f"/proc/{pid}"))
    return found is not None and found[0] != "Z"


def group_alive(group: int) -> list[str]:
    """Processes of process group ``group`` that still run: their command lines."""
    running = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        found = _state_and_group(pid_dir)
        if found is None or found[0] == "Z" or found[1] != group:
            continue
        try:
            running.append((pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            continue
    return running
