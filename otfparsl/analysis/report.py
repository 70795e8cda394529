"""The run report: one self-contained HTML page a chemist reads (``RUN_DIR/report/index.html``).

Everything shown is measured from the run's files (``run.yaml``, ``events.jsonl``,
``labels.extxyz``, ``calibration.json``, ``summary.json`` or ``checkpoint.json``,
``audit/audit.json``, ``analysis/``), so a report can be made of a finished run, of a running
one, or of one that crashed; each figure's caption says what it rests on. Two computations go
beyond reading: the pretrained model's prediction at the labelled structures
(:mod:`otfparsl.analysis.pretrained`), which the run does not record, and the system analyses
the run YAML names (``analyses:``, :mod:`otfparsl.analysis.systems`), written to ``analysis/``. ``otfparsl run`` and
``otfparsl resume`` write the report when they end, however they end; ``otfparsl report RUN_DIR``
writes it on demand. No Parsl.
"""

from __future__ import annotations

import io
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from otfparsl.analysis import audit_figures, captions, figures, sections
from otfparsl.analysis import page as html
from otfparsl.analysis.pretrained import CACHE_NAME, PretrainedErrors, pretrained_errors
from otfparsl.analysis.run_record import (
    RunRecord,
    energy_offset_eV,
    final_student_t,
    headline,
    read_run,
    replay_calibration,
    time_split,
)
from otfparsl.analysis.workflow_analysis import read_workflow_analysis, run_system_analyses
from otfparsl.fileio import atomic_write, atomic_write_text

log = logging.getLogger(__name__)


def write_report(run_dir: str | os.PathLike, compare_pretrained: bool = True) -> Path:
    """Write ``RUN_DIR/report/index.html`` (figures embedded, and as PNG beside it).

    Parameters
    ----------
    run_dir
        A run directory (finished, running or interrupted).
    compare_pretrained
        Evaluate the pretrained model at every labelled structure (cached in
        ``report/pretrained_at_labels.json``) to show the error it would have made there.

    Returns
    -------
    Path
        The page, ``RUN_DIR/report/index.html``.

    Raises
    ------
    otfparsl.errors.ConfigurationError
        When ``run_dir`` holds no started run.
    """
    record = read_run(run_dir)
    out = record.rd.report
    out.mkdir(exist_ok=True)
    head = headline(record)
    pretrained, why_not = _pretrained(record, out, compare_pretrained)
    points, replayed = replay_calibration(record)
    final = final_student_t(record)
    split = time_split(record)
    factor, unit = figures.time_unit(record)
    pngs = {
        "dft_calls": _png("dft_calls.png", figures.dft_calls_figure(record, head), captions.dft_calls_caption(record, head)),
        "errors": _png("errors.png", figures.errors_figure(record, head, pretrained),
                       captions.errors_caption(record, pretrained, why_not)),
        "calibration": _png("calibration.png", figures.calibration_figure(record, points, final),
                            captions.calibration_caption(record, points, replayed)),
        "traces": _png("traces.png", figures.traces_figure(record), captions.traces_caption(record)),
    }  # fmt: skip
    if split is not None:
        pngs["time"] = _png("time_split.png", figures.time_split_figure(split), captions.time_caption(split))
    if record.audit is not None:
        audit = record.audit
        pngs["audit"] = [
            _png("audit_reliability.png", audit_figures.reliability_figure(audit), captions.AUDIT_CAPTIONS[0]),
            _png("audit_error_vs_std.png", audit_figures.error_vs_scale_figure(audit), captions.AUDIT_CAPTIONS[1]),
            _png("audit_errors_time.png", audit_figures.errors_over_time_figure(audit, factor, unit), captions.AUDIT_CAPTIONS[2]),
        ]  # fmt: skip
    names = list(getattr(record.settings, "analyses", []) or [])
    workflow = read_workflow_analysis(record.rd.path, run_system_analyses(record.rd.path, names) if names else [])
    for png in _flatten(pngs):
        atomic_write(out / png.name, lambda handle, data=png.data: handle.write(data))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = sections.render(record, head, pngs, pretrained, final, split, workflow, generated)
    index = out / "index.html"
    atomic_write_text(index, page)
    return index


def _pretrained(record: RunRecord, out: Path, wanted: bool) -> tuple[PretrainedErrors | None, str]:
    """The pretrained model's errors at the labels, or None and the reason in words."""
    offset = energy_offset_eV(record)
    if not wanted:
        return None, "not computed (write_report(compare_pretrained=False) / --no-pretrained)"
    if offset is None or not record.labels:
        return None, "no label yet"
    try:
        return pretrained_errors(record.rd.path, record.settings, offset, out / CACHE_NAME), ""
    except Exception as exc:  # the model may not load here (package, weights): say so, draw the rest
        log.warning("report: the pretrained model's errors were not computed: %s", exc)
        return None, f"not computed: the pretrained model could not be evaluated here ({type(exc).__name__}: {exc})"


def _png(name: str, fig, caption: str) -> html.Png:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return html.Png(name, buffer.getvalue(), caption)


def _flatten(pngs: dict) -> list[html.Png]:
    out: list[html.Png] = []
    for value in pngs.values():
        out.extend(value if isinstance(value, list) else [value])
    return out


__all__ = ["write_report"]
