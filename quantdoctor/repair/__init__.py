"""Repair a quantized model: the smallest change that meets an accuracy budget, as a .tflite and a replayable recipe.

`repair()` ranks actions (`repair.actions`) by the diagnosis' proxies, verifies them with real quantized builds
(`repair.build`) and evaluations (`repair.evaluate`) in a greedy search (`repair.search`), and writes the model and a
recipe that `apply_recipe()` replays to the same bytes (`repair.recipe`).
"""

from __future__ import annotations

from quantdoctor.repair.api import repair
from quantdoctor.repair.recipe import Recipe, apply_recipe
from quantdoctor.repair.result import RepairResult, TrajectoryRow

__all__ = ["repair", "apply_recipe", "Recipe", "RepairResult", "TrajectoryRow"]
