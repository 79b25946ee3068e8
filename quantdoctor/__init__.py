"""quantdoctor: find where and why a quantized model departs from its float model.

Importing the package is cheap: TensorFlow and LiteRT load only when a diagnosis runs.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Imported eagerly (both are light) so that the name `diagnose` is the function, not the `quantdoctor.diagnose` package.
from quantdoctor.diagnose.config import DiagnoseConfig  # noqa: E402
from quantdoctor.diagnose.pipeline import diagnose  # noqa: E402
from quantdoctor.diagnose.results import Diagnosis  # noqa: E402

# Likewise `repair` must be the function, not the `quantdoctor.repair` package; `compare` lives in `diagnose/`.
from quantdoctor.diagnose.compare import compare  # noqa: E402
from quantdoctor.repair import apply_recipe  # noqa: E402
from quantdoctor.repair.api import repair  # noqa: E402

# A TF 1.x frozen graph needs its input/output node names: `diagnose(frozen_graph(path, inputs, outputs), data, ...)`.
from quantdoctor.backends.tf1 import frozen_graph  # noqa: E402

__all__ = ["diagnose", "compare", "repair", "apply_recipe", "frozen_graph", "Diagnosis", "DiagnoseConfig", "__version__"]
