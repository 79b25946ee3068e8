"""Where quantdoctor keeps files it builds once (the demo model), and how it writes files safely."""

from __future__ import annotations


import os
from pathlib import Path

from quantdoctor.cache import _SWITCH_VALUES
from quantdoctor.errors import UserInputError

CACHE_ENV = "QUANTDOCTOR_CACHE"


def cache_dir() -> Path:
    """Return the cache folder, creating it if missing.

    `$QUANTDOCTOR_CACHE` if set to a path (not a 0/1 switch), else `$XDG_CACHE_HOME/quantdoctor`, else `~/.cache/quantdoctor`.

    Raises:
        UserInputError: the folder cannot be created (e.g. a read-only home).
    """
    override = os.environ.get(CACHE_ENV)
    # QUANTDOCTOR_CACHE=0/1/off/on switches the conversion cache (quantdoctor/cache.py); only a path names a folder.
    if override and override.strip().lower() not in _SWITCH_VALUES:
        path = Path(override).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
        path = base / "quantdoctor"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(
            f"cannot create the cache folder {path} ({exc.strerror}); set {CACHE_ENV} to a writable folder"
        ) from exc
    return path
