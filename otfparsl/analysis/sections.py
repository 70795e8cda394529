"""The sections of the run report's page (HTML), from the run's files and figures."""

from __future__ import annotations

import json
import math

from otfparsl.analysis import page as html
from otfparsl.analysis.audit_figures import AUDIT_NAMES
from otfparsl.analysis.figures import time_unit
from otfparsl.analysis.metrics import audit_verdict, heldout_figures
from otfparsl.analysis.pretrained import PretrainedErrors
from otfparsl.analysis.run_record import (
    Headline,
    RunRecord,
    TimeSplit,
    resolved_sampler,
)
from otfparsl.analysis.workflow_analysis import ANALYSIS_DIR, WorkflowAnalysis
from otfparsl.from_settings import energy_sigma_eV, programme
from otfparsl.units import KCAL_PER_MOL_EV


def _kcal(energy_eV: float) -> float:
    return energy_eV / KCAL_PER_MOL_EV


def _time(record: RunRecord, time_fs: float) -> str:
    factor, unit = time_unit(record)
    return f"{time_fs * factor:.4g} {unit}"


# ----------------------------------------------------------------------------- sections
def render(record, head, pngs, pretrained, final, split, workflow, generated) -> str:
    """Return the whole page.

    Parameters
    ----------
    record, head
        The run's files and its headline counts.
    pngs
        Figures by section: ``dft_calls``, ``errors``, ``calibration``, ``traces``, and when
        available ``time`` and ``audit`` (a list of three).
    pretrained
        The pretrained model's errors at the labels, or None.
    final
        (scale factor, dof) of the final calibration, or None before the first label.
    split, workflow
        The time split and the workflow's analysis (each None when absent).
    generated
        When the page was written, in words.
    """
    s = record.settings
    k = record.threshold_eV
    done = record.finished
    structure = _structure_words(record)
    header = (
        f"<h1>On-the-fly run <code>{html.esc(s.name)}</code></h1>"
        f"<p class='sub'>{html.esc(structure)}; {html.esc(s.model.family)} {html.esc(s.model.source)} "
        f"fine-tuned on the fly against {html.esc(_labeler_words(s))}; K = {k:.4g} eV = {_kcal(k):.3g} kcal/mol</p>"
        f"<span class='status {'done' if done else 'open'}'>{html.esc(record.status)}</span>"
    )
    parts = [
        ("summary", "What the run did", _summary(record, head, pretrained, split)),
        ("settings", "Settings", _settings(record)),
        ("dft", "When DFT was called", html.figure(pngs["dft_calls"])),
        ("errors", "Error at each intervention", html.figure(pngs["errors"]) + _label_table(record, pretrained)),
        ("calibration", "Calibration", _calibration_text(record, head, final) + html.figure(pngs["calibration"])),
        ("trajectory", "The trajectory", html.figure(pngs["traces"])),
        ("audit", "Held-out audit", _audit(record, pngs.get("audit"))),
        ("workflow", workflow.title if workflow else "Workflow analysis", _workflow(workflow)),
        ("time", "Where the time went", _time_split(split, pngs.get("time")) + _per_call(record)),
    ]  # fmt: skip
    footer = (
        f"Written {html.esc(generated)} by <code>otfparsl report</code> from the files of "
        f"<code>{html.esc(record.rd.path)}</code>: run.yaml, events.jsonl, labels.extxyz, calibration.json, "
        "summary.json or checkpoint.json, audit/audit.json, analysis/. Figures are embedded and also "
        "written beside this page as PNG."
        + (f" {record.skipped_lines} unreadable line(s) of events.jsonl were skipped." if record.skipped_lines else "")
    )
    return html.document(f"otfparsl report: {s.name}", header, parts, footer)


def _labeler_words(settings) -> str:
    """The DFT code in words: its kind and the options that name the method."""
    options = settings.labeler.options
    named = [str(options[k]) for k in ("name", "xc", "basis") if k in options]
    return settings.labeler.kind + (f" ({', '.join(named)})" if named else "")


def _structure_words(record: RunRecord) -> str:
    import ase.io

    path = record.rd.path / "structure.extxyz"
    if not path.is_file():
        return "structure not recorded"
    atoms = ase.io.read(path)
    kind = "periodic cell" if atoms.pbc.all() else "molecule / cluster"
    return f"{atoms.get_chemical_formula()} ({len(atoms)} atoms, {kind})"


def _summary(record: RunRecord, head: Headline, pretrained: PretrainedErrors | None, split: TimeSplit | None) -> str:
    promise = 1.0 - record.settings.calibration.confidence
    factor, unit = time_unit(record)
    low, high = head.above_ci95
    walkers = len(head.md_steps) or record.settings.md.walkers
    cards = [
        html.card(str(head.dft_calls), "DFT calls (labels learned)",
                  f"label events in events.jsonl; {head.label_failures} failed attempt(s) (label_failed events)"),
        html.card(f"{max(head.md_time_fs.values(), default=0.0) * factor:.4g} {unit}",
                  f"MD simulated, of {record.programme_duration_fs * factor:.4g} {unit} programmed",
                  f"{sum(head.md_steps.values())} step events over {walkers} walker(s) (events.jsonl)"),
        html.card(f"{head.above} of {head.checked}" if head.checked else "none yet",
                  "checked interventions with |error| > K",
                  (f"95 % CI {low:.2f}-{high:.2f} (Clopper-Pearson), label events. " if head.checked else
                   "no label after the first (label events): no error was measured. ")
                  + "The first label fixes the offset and is not checked. Interventions are where the run was "
                  "unsure: not a held-out measure.",
                  "bad" if head.checked and head.above / head.checked > promise else ""),
    ]  # fmt: skip
    if pretrained is not None and head.checked:
        n = sum(abs(pretrained.errors_eV.get((lb["walker"], lb["step"]), 0.0)) > record.threshold_eV for lb in record.labels[1:])
        cards.append(html.card(f"{n} of {head.checked}", "where the pretrained model would have been above K",
                               f"{pretrained.model} at the same labelled structures (labels.extxyz), computed by this report"))  # fmt: skip
    cards.append(_heldout_card(record))
    cards.append(_audit_card(record, promise))
    if split is not None:
        cards.append(html.card(_duration(split.wall_s), "wall time", f"{split.basis}; split at the end of the page"))
    out = f"<div class='cards'>{''.join(cards)}</div>"
    if record.labels and head.counted == 0:
        out += html.note(
            "<b>The calibration rests on the prior alone.</b> No intervention entered it (label events: "
            "counted = false for all), so every confidence the run claimed rests on the Gamma prior (a, b) "
            "and the ensemble's std, not on a measured error. Check it against DFT with "
            f"<code>otfparsl audit {html.esc(record.rd.path)}</code>.", bad=True,
        )  # fmt: skip
    return out


def _heldout_card(record: RunRecord) -> str:
    """The run's own held-out checks: MD steps drawn at random, labelled, scored before use."""
    calibration = record.settings.calibration
    checks = heldout_figures(record.heldout, calibration.energy_threshold_eV, calibration.confidence)
    if not checks["frames"]:
        total = programme(record.settings.md).total_steps  # the count the driver's plan used
        if record.settings.heldout.labels == 0:
            why = "heldout.labels is 0"
        elif record.settings.heldout.n_checks(total) == 0:
            why = f"{total} MD steps are too few: at most heldout.max_fraction of them are checked"
        else:
            why = "the run has not reached its first drawn step"
        return html.card("none yet", "in-run held-out checks above K", f"no heldout event in events.jsonl ({why})", "warn")
    kind = {"kept": "", "not_shown": "warn", "exceeded": "bad", "broken": "bad"}[checks["status"]]
    return html.card(
        f"{checks['above_threshold']} of {checks['frames']}",
        f"in-run held-out checks above K: {checks['headline']}",
        f"{checks['detail']} heldout events: MD steps drawn at random (not chosen by "
        f"the rule), labelled by DFT and scored before use, never trained on; rms z "
        f"{html.fmt(checks['rms_z_calibrated'], 3)}, coverage of the 95 % interval {html.fmt(checks['coverage_95'], 3)}",
        kind,
    )  # fmt: skip


def _audit_card(record: RunRecord, promise: float) -> str:
    if record.audit is None:
        return html.card("not audited", "no held-out check against DFT",
                         f"run `otfparsl audit {record.rd.path}` to label frames the run never labelled", "warn")  # fmt: skip
    rec = record.audit["predictions"]["recorded"]
    verdict = audit_verdict(rec, record.settings.calibration.confidence)
    kind = {"kept": "", "not_shown": "warn", "exceeded": "bad", "broken": "bad"}[verdict.status]
    if verdict.calibration == "overconfident" and not kind:
        kind = "warn"
    return html.card(
        f"{rec['n_above_threshold']} of {rec['n_frames']}", f"held-out frames above K: {verdict.headline}",
        f"{verdict.detail()} audit/audit.json: never-labelled trajectory frames labelled by "
        f"{record.audit.get('labeler')}; rms z {html.fmt(rec.get('rms_z_calibrated'), 3)}",
        kind,
    )  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min" if seconds >= 120 else f"{seconds:.3g} s"


def _settings(record: RunRecord) -> str:
    s = record.settings
    cal = record.calibration or {}
    k = s.calibration.energy_threshold_eV
    model = [("family", s.model.family), ("source", s.model.source), ("dtype", s.model.dtype),
             ("device (ensemble / chains)", f"{s.model.device} / {s.model.chain_device}")]  # fmt: skip
    calibration = [
        ("threshold K", f"{k:.5g} eV = {_kcal(k):.4g} kcal/mol"),
        ("confidence level", f"{s.calibration.confidence:g} (DFT when P(|error| <= K) is below it)"),
        ("Gamma prior a, b", f"{html.fmt(cal.get('a'))}, {html.fmt(cal.get('b'))}" if cal else "(no label yet)"),
        ("uncounted first MD steps", s.calibration.skip_first_steps),
        ("EMA of z²", s.calibration.ema_decay if s.calibration.ema_decay is not None else "off"),
        ("force threshold", f"{s.calibration.force_threshold_eV_per_A} eV/Å" if s.calibration.force_threshold_eV_per_A else "off"),
        ("σ_E of the likelihood", f"{energy_sigma_eV(s.calibration):.4g} eV (0.1 K)"),
    ]  # fmt: skip
    bayes = resolved_sampler(record)
    sampler = [
        ("chains M", bayes["n_chains"]), ("SGHMC steps per update", bayes["n_steps"]),
        ("step size γ0", bayes["step_size"]), ("σ_TL (transfer prior)", bayes["sigma_tl"]),
        ("minibatch", f"{bayes['batch_size']} structures, {bayes['priority']} rule"),
        ("noise schedule", f"{bayes['noise_off_steps']} steps off, {bayes['noise_ramp_steps']} ramp"),
        ("variance divisor", "M - 1" if bayes["variance_ddof"] == 1 else "M"), ("seed", bayes["seed"]),
    ]  # fmt: skip
    dft = [("code", s.labeler.kind), ("options", json.dumps(s.labeler.options, sort_keys=True)),
           ("retries", json.dumps(s.labeler.retries)), ("stop after failures in a row", s.labeler.max_consecutive_failures)]  # fmt: skip
    grid = (
        f"<div class='settings'><div>{html.key_values(model, 'Foundation model')}"
        f"{html.key_values(sampler, 'Posterior sampling (SGHMC)')}</div><div>"
        f"{html.key_values(calibration, 'Threshold and calibration')}{html.key_values(dft, 'DFT')}</div></div>"
    )
    return grid + "<h3>Temperature programme</h3>" + _programme(record) + (
        f"<p>{s.md.walkers} walker(s), MD seed {s.md.seed}; a trajectory frame every "
        f"{s.md.trajectory_interval} steps; a checkpoint every {s.md.checkpoint_interval} steps. "
        "All settings from run.yaml (the resolved settings the run was made with); the Gamma prior "
        "from calibration.json.</p>"
    )


def _programme(record: RunRecord) -> str:
    rows, start = [], 0.0
    for i, seg in enumerate(record.settings.md.segments, 1):
        n = int(round(seg.duration_fs / seg.timestep_fs))
        coupling = {"langevin": f"friction {seg.friction_per_fs:g} /fs", "nve": "none",
                    "npt": f"{seg.pressure_bar:g} bar, τ_T {seg.thermostat_time_fs:g} fs, τ_P {seg.barostat_time_fs:g} fs"}  # fmt: skip
        rows.append((i, seg.ensemble, f"{seg.temperature_K:g}", _time(record, start), _time(record, start + n * seg.timestep_fs),
                     f"{seg.timestep_fs:g}", n, coupling[seg.ensemble]))  # fmt: skip
        start += n * seg.timestep_fs
    headers = ("#", "ensemble", "T (K)", "from", "to", "time step (fs)", "steps", "coupling")
    return html.table(headers, rows, (True, False, True, True, True, True, True, False))


def _label_table(record: RunRecord, pretrained: PretrainedErrors | None) -> str:
    k = record.threshold_eV
    rows = []
    for i, lb in enumerate(record.labels, 1):
        pre = pretrained.errors_eV.get((lb["walker"], lb["step"])) if pretrained else None
        rows.append((
            i, lb["walker"], lb["step"], _time(record, record.time_fs(lb["walker"], lb["step"])),
            f"{lb['error_eV']:+.4g}", f"{_kcal(lb['error_eV']):+.3g}", "yes" if i > 1 and lb["exceeds_threshold"] else "",
            f"{pre:+.4g}" if pre is not None else "–", f"{lb['energy_std']:.3g}", f"{lb['confidence']:.3f}",
            "yes" if lb.get("counted") else "no", f"{lb['z']:+.3g}", html.fmt(lb.get("seconds"), 3),
        ))  # fmt: skip
    headers = ("#", "walker", "step", "MD time", "error (eV)", "(kcal/mol)", f"> K = {k:.3g}", "pretrained (eV)",
               "ensemble std (eV)", "confidence", "counted", "z", "DFT (s)")  # fmt: skip
    numeric = (True, True, True, True, True, True, False, True, True, True, False, True, True)
    return (f"<details><summary>All {len(rows)} interventions (label events of events.jsonl)</summary>"
            f"{html.table(headers, rows, numeric)}</details>")  # fmt: skip


def _calibration_text(record: RunRecord, head: Headline, final: tuple[float, float] | None) -> str:
    cal = record.calibration
    if cal is None or final is None:
        return "<p>No label yet: the calibration is the prior's.</p>"
    zs = [lb["z"] for lb in record.labels if lb.get("counted") and math.isfinite(lb["z"])]
    rms = math.sqrt(sum(z * z for z in zs) / len(zs)) if zs else None
    level = record.settings.calibration.confidence
    return (
        f"<p>The run ended with n = {cal['n']:g} counted interventions of {head.dft_calls} and S = Σz² = "
        f"{cal['S']:.4g} (calibration.json): the predictive error is a Student-t with ν = {final[1]:g} and "
        f"scale s = {final[0]:.3g} × the ensemble's std. DFT is skipped when P(|error| <= K) >= {level:g}. "
        f"rms z of the counted interventions: {html.fmt(rms, 3)} (about the final scale factor when the "
        "calibration has caught up with the ensemble's real errors).</p>"
    )


_CORRELATED = (
    "The intervals treat the frames as independent; frames of one trajectory are correlated, so they are "
    "approximate (a longer trajectory or more walkers give more independent frames)."
)


def _audit(record: RunRecord, pngs: list | None) -> str:
    audit = record.audit
    if audit is None:
        return html.note(
            "<b>Not audited.</b> The numbers above rest on the run's own interventions only. Run "
            f"<code>otfparsl audit {html.esc(record.rd.path)}</code> to label trajectory frames the run never "
            "labelled and compare them with what it claimed there."
        )
    rows = []
    for name, m in audit["predictions"].items():
        low, high = m["fraction_above_threshold_ci95"]
        rows.append((AUDIT_NAMES[name], m["n_frames"], m["n_above_threshold"], f"{low:.2f}-{high:.2f}",
                     html.fmt(m["energy_rmse_eV"]), html.fmt(m["forces_rmse_eV_per_A"]),
                     html.fmt(m.get("rms_z_calibrated")), html.fmt(m.get("coverage_95"), 3),
                     _auc(m) if name != "pretrained" else "–"))  # fmt: skip
    headers = ("prediction", "frames", "above K", "95 % CI", "E RMSE (eV)", "F RMSE (eV/Å)", "rms z", "coverage 95 %", "AUC(std)")
    text = (
        f"<p>{audit['predictions']['recorded']['n_frames']} trajectory frames the run never labelled, drawn "
        f"with seed {audit.get('seed')}, labelled by {html.esc(_labeler_words(record.settings))} (audit/audit.json; "
        "these labels never entered the training set). 'During the run' is what the run claimed at that step; "
        "'final ensemble' the fine-tuned ensemble at the end with the final calibration; 'pretrained model' the "
        "foundation model before any fine-tuning (no uncertainty).</p>"
    )
    verdict = audit_verdict(audit["predictions"]["recorded"], record.settings.calibration.confidence)
    text += html.note(f"<b>{html.esc(verdict.headline)}:</b> {html.esc(verdict.detail())} {_CORRELATED}",
                      bad=verdict.status in ("exceeded", "broken"))  # fmt: skip
    return text + html.table(headers, rows, (False, True, True, True, True, True, True, True, True)) + "".join(
        html.figure(p) for p in pngs or []
    )


def _auc(metrics: dict) -> str:
    if "auc_roc_std" in metrics and metrics["auc_roc_std"] is None:
        return "n/a (all frames on one side of K)"
    return html.fmt(metrics.get("auc_roc_std"), 3)


def _workflow(workflow: WorkflowAnalysis | None) -> str:
    if workflow is None:
        return (
            f"<p>None: this run has no <code>{ANALYSIS_DIR}/</code> folder. A run YAML's <code>analyses:</code> "
            "(system analyses, otfparsl/analysis/systems) are run and shown here; a workflow adds its own by "
            f"writing PNG figures and an <code>analysis.json</code> (title, summary, numbers with their basis, "
            f"figure captions) into <code>RUN_DIR/{ANALYSIS_DIR}/</code>; see docs/report.md.</p>"
        )
    out = f"<p>{html.esc(workflow.summary)}</p>" if workflow.summary else ""
    for result in workflow.systems:
        out += f"<h3>{html.esc(result.name)}</h3>"
        if result.png is not None:
            caption = (f"{result.summary}. Computed by otfparsl.analysis.systems.{result.name} from this run's "
                       f"files; its numbers are in analysis/{result.name}.json (below).")  # fmt: skip
            out += html.figure(html.Png(f"../{ANALYSIS_DIR}/{result.png.name}", result.png.read_bytes(), caption))
        rows = [(key, html.fmt(value)) for key, value in result.numbers]
        out += (f"<details><summary>The numbers of analysis/{html.esc(result.name)}.json</summary>"
                f"{html.table(('quantity', 'value'), rows, (False, True))}</details>")  # fmt: skip
    if workflow.numbers:
        rows = [(n["name"], html.fmt(n["value"]), n["unit"], n["basis"] or "NO BASIS GIVEN by the workflow")
                for n in workflow.numbers]  # fmt: skip
        out += html.table(("quantity", "value", "unit", "basis"), rows, (False, True, False, False))
    for path, caption in workflow.figures:
        png = html.Png(f"../{ANALYSIS_DIR}/{path.name}", path.read_bytes(),
                       caption or f"{path.name} (no caption in analysis.json)")  # fmt: skip
        out += html.figure(png)
    if workflow.problems:
        out += html.note("<br>".join(html.esc(p) for p in workflow.problems), bad=True)
    return out + f"<p class='sub'>From <code>RUN_DIR/{ANALYSIS_DIR}/</code> (docs/report.md says how a workflow adds to it).</p>"


def _time_split(split: TimeSplit | None, png) -> str:
    if split is None:
        return "<p>No timing yet (no checkpoint and no summary.json).</p>"
    rows = [(name, f"{sec:.4g}", f"{100 * sec / split.wall_s:.1f} %" if split.wall_s > 0 else "–")
            for name, sec in split.parts_s.items()]  # fmt: skip
    rows.append(("wall time", f"{split.wall_s:.4g}", "100 %"))
    return html.figure(png) + html.table(("part", "seconds", "share"), rows, (False, True, True))


def _per_call(record: RunRecord) -> str:
    """Mean cost of one DFT label and of one update of all chains (label and update events)."""
    labels = [lb["seconds"] for lb in record.labels if isinstance(lb.get("seconds"), (int, float)) and math.isfinite(lb["seconds"])]
    updates = [u["seconds"] for u in record.updates if isinstance(u.get("seconds"), (int, float))]
    parts = []
    if labels:
        parts.append(f"one DFT label took {sum(labels) / len(labels):.3g} s on average ({len(labels)} label events)")
    if updates:
        parts.append(f"one update of all {record.settings.bayes.n_chains} chains {sum(updates) / len(updates):.3g} s "
                     f"({len(updates)} update events)")  # fmt: skip
    return f"<p>Per call: {html.esc('; '.join(parts))}.</p>" if parts else ""
