"""The captions of the run report's figures: what each shows and the files it rests on."""

from __future__ import annotations

import math

from otfparsl.analysis import page as html
from otfparsl.analysis.pretrained import CACHE_NAME, PretrainedErrors
from otfparsl.analysis.run_record import (
    CalibrationPoint,
    Headline,
    RunRecord,
    TimeSplit,
    energy_offset_eV,
)
from otfparsl.calibration import Calibrator

AUDIT_CAPTIONS = (
    "Reliability of the calibrated Student-t on the held-out frames (audit/audit.json): for each "
    "nominal level, the fraction of frames whose DFT error fell inside the predicted central interval. "
    "On the diagonal: honest; below: overconfident; above: overcautious.",
    "|error| against DFT on each held-out frame against the predicted scale s of the calibrated "
    "Student-t (audit/audit.json), during the run and with the final ensemble. Above the dotted line "
    "the error is outside a 95 % normal interval; above the dashed line it exceeds K. The two markers "
    "coincide at frames after the run's last label (the ensemble did not change after them).",
    "|error| against DFT of the three predictions at each held-out frame over MD time (audit/audit.json): "
    "what the run claimed at that step, the final fine-tuned ensemble, and the pretrained model. The "
    "first two coincide at frames after the run's last label (the ensemble did not change after them).",
)


def dft_calls_caption(record: RunRecord, head: Headline) -> str:
    """Caption of the DFT-calls figure."""
    return (
        "Cumulative DFT calls of each MD walker over MD time (step events of events.jsonl marked "
        "'intervened'), on the temperature programme of run.yaml (shaded segments, named by their "
        "target temperature and ensemble). Thin red line, right axis: the instantaneous kinetic "
        "temperature at each step. Red crosses on the time axis: failed DFT attempts "
        f"(label_failed events: {head.label_failures})."
    )


def errors_caption(record: RunRecord, pretrained: PretrainedErrors | None, why_not: str) -> str:
    """Caption of the errors-at-interventions figure."""
    offset = energy_offset_eV(record)
    level = record.settings.calibration.confidence
    text = (
        "Each filled point: the energy error E_pred - (E_DFT + c) of the ensemble's prediction at a "
        "structure the run sent to DFT, made before that label was learned (label events of "
        f"events.jsonl); c = {html.fmt(offset, 8)} eV is the offset fixed by the first label "
        f"(calibration.json). Bars: the central {level:.0%} interval of the calibrated Student-t the "
        "run used to decide at that step (step events: energy_scale_eV, dof). Green band: ±K. "
    )
    if pretrained is not None:
        text += (
            f"Open diamonds: the pretrained model ({pretrained.model}, sigma head at zero: the chains' "
            "starting point) at the same structures, one forward pass each on the structures of "
            f"labels.extxyz, computed by this report ({pretrained.computed} now, {pretrained.cached} from "
            f"report/{CACHE_NAME}); the run does not record it. "
        )
    else:
        text += f"The pretrained model's error at these structures: {why_not}. "
    return text + (
        "The vertical axis is linear, or, when an error exceeds 8 K, symmetric-log (linear within ±K, "
        "logarithmic beyond) as its label says. These are the structures the run was unsure about, so "
        "they are not a random sample of the trajectory (the held-out audit's frames are)."
    )


def calibration_caption(record: RunRecord, points: list[CalibrationPoint], replayed: Calibrator | None) -> str:
    """Caption of the calibration figure."""
    cal = record.calibration or {}
    skip = record.settings.calibration.skip_first_steps
    text = (
        "Left: z = (E_DFT + c - E_pred) / ensemble std of the counted interventions (label events with "
        f"counted = true; interventions at the first {skip} MD steps of a walker are not counted), against "
        "the predictive density of the run's final calibration (calibration.json): z ~ scale x t_ν. "
        "Right: the scale factor s / std = sqrt((b + S/2) / (a + n/2)) after each label, replayed from "
        f"the label events with the prior a = {html.fmt(cal.get('a'))}, b = {html.fmt(cal.get('b'))} of "
        "calibration.json."
    )
    if replayed is not None and cal:
        same = math.isclose(replayed.S, cal["S"], rel_tol=1e-9, abs_tol=1e-12) and math.isclose(replayed.n, cal["n"])
        text += (
            " The replay reproduces calibration.json's S and n." if same else
            f" The replay gives S = {replayed.S:.6g}, n = {replayed.n:g}; calibration.json holds "
            f"S = {cal['S']:.6g}, n = {cal['n']:g} (the files disagree; trust calibration.json)."
        )  # fmt: skip
    return text


def traces_caption(record: RunRecord) -> str:
    """Caption of the trajectory traces."""
    level = record.settings.calibration.confidence
    return (
        "Every MD step (step events of events.jsonl). Top: potential energy of the step (the "
        "ensemble mean, or DFT + c where DFT took the step). Middle: the ensemble's std and the "
        "calibrated scale s = std x scale factor the decision used, against K. Bottom: the "
        f"confidence P(|error| <= K) of the Student-t; below {level:g} (dotted) DFT is called (red crosses), "
        "and always at the first step, whose label fixes the energy offset c."
    )


def time_caption(split: TimeSplit) -> str:
    """Caption of the time split."""
    text = (
        f"Wall time per part of the loop, from {split.basis}. Inference: ensemble predictions; DFT: "
        "labelling, with retries and waiting for a dft worker; chain updates: all chains, once per "
        "label; other: the wall time left (MD integration, checkpoints, files, start-up)."
    )
    if split.walkers > 1:
        text += (
            f" The parts are summed over the {split.walkers} walkers, which run at the same time, so "
            "they can add up to more than the wall time (then 'other' is negative and drawn as zero)."
        )
    return text
