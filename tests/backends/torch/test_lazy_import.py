"""PyTorch stays optional: importing quantdoctor (and this backend's modules) does not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quantdoctor.errors import UserInputError


def test_importing_quantdoctor_and_the_torch_modules_does_not_import_torch():
    code = (
        "import sys, quantdoctor, quantdoctor.backends.torch.export, quantdoctor.demo.mtcnn, "
        "quantdoctor.demo.efficientnet_lite0_torch\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "NO-TORCH"


def test_missing_torch_is_a_user_error_naming_the_extra(monkeypatch):
    from quantdoctor.backends.torch.export import import_torch

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(UserInputError, match=r"PyTorch is not installed; pip install 'quantdoctor\[torch\]'"):
        import_torch()
