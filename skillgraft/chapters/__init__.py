"""The chapters: one module per chapter, each with its experiment, its intervals and its verdict rule.

Each module has ``run(params) → result`` (the chapter from its notebook's flat parameters, as
the notebook calls it; the sweep plans chapters through it), the experiment function the
notebook calls by name, and ``rule(...) → Verdict``: the claim's verdict rule with its
thresholds, fixed before any chapter is executed and unit-tested on hand-made results.
The parameters themselves are the notebook's papermill ``parameters`` cell, checked by
:mod:`skillgraft.cli` before any compute.
"""
from __future__ import annotations

from . import calibration, continual, multitask, ood, single_task
from .common import MASK_VARIANTS, Setting

__all__ = ["CHAPTERS", "Setting", "MASK_VARIANTS", "single_task", "calibration", "ood", "multitask", "continual"]

CHAPTERS = {  # notebook name -> chapter module
    "01_single_task_grafting": single_task,
    "02_calibration": calibration,
    "03_ood": ood,
    "04_multitask": multitask,
    "05_continual_learning": continual,
}
