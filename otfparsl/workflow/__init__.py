"""Parsl orchestration: site profiles, tasks, walkers and the on-the-fly driver.

This is the only package of otfparsl that imports parsl (in :mod:`otfparsl.workflow.site` and
:mod:`otfparsl.workflow.slurm`). It imports nothing itself: import the submodules directly,
e.g. ``from otfparsl.workflow.site import open_site``. The run directory (layout, lock,
checkpoints) lives in :mod:`otfparsl.run`, without Parsl.
"""
