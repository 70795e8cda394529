"""The run directory without Parsl: layout, event log, lock and checkpoints.

Reports, audits and the fine-tuned ensemble read a run directory through this package, so none
of them needs the orchestrator (:mod:`otfparsl.workflow`). Import the submodules directly:
:mod:`otfparsl.run.directory` (paths, ``events.jsonl``, JSON state files),
:mod:`otfparsl.run.lock` (one writing process per directory) and
:mod:`otfparsl.run.checkpoint` (``checkpoint.json``, preparing a resume).
"""
