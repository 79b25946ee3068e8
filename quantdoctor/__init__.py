"""quantdoctor: find where and why a quantized model departs from its float model.

Importing the package is cheap: TensorFlow and LiteRT load only when a diagnosis runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["diagnose", "Diagnosis", "DiagnoseConfig", "__version__"]

if TYPE_CHECKING:
    from quantdoctor.diagnose.config import DiagnoseConfig
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.diagnose.results import Diagnosis


def __getattr__(name: str) -> Any:
    if name == "diagnose":
        from quantdoctor.diagnose.pipeline import diagnose

        return diagnose
    if name == "Diagnosis":
        from quantdoctor.diagnose.results import Diagnosis

        return Diagnosis
    if name == "DiagnoseConfig":
        from quantdoctor.diagnose.config import DiagnoseConfig

        return DiagnoseConfig
    raise AttributeError(f"module 'quantdoctor' has no attribute {name!r}")
