"""Native libraries' output on the terminal: what TensorFlow's and LiteRT's C++ code prints on file descriptor 2.

A user error must reach the terminal as one line with nothing before it, but importing TensorFlow prints absl's
"All log messages before absl::InitializeLog() ..." warning and oneDNN's banner from C++, where neither
`TF_CPP_MIN_LOG_LEVEL` nor Python's logging reaches. `import_tensorflow_quietly` holds them back; the converter uses
`captured_native_stderr` for its own progress lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)


class Captured:
    """What a `captured_native_stderr` block printed (set when the block ends)."""

    text = ""


@contextlib.contextmanager
def captured_native_stderr() -> Iterator[Captured]:
    """Send file descriptor 2 to a temporary file, where C++ code prints its progress and log lines."""
    captured = Captured()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreter): leave stderr alone
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (once) with its C++ start-up lines held back; they go to the debug log instead.

    `TF_CPP_MIN_LOG_LEVEL` (kept if the user set it) quiets TensorFlow's own C++ logging afterwards, and absl's Python
    logger is set to errors only.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        with captured_native_stderr() as captured:
            import tensorflow  # noqa: F401 - imported for its side effect: loaded once, quietly
        if captured.text.strip():
            log.debug("TensorFlow start-up output:\n%s", captured.text)
    try:
        import absl.logging
    except ImportError:  # absl comes with TensorFlow; without it there is nothing to quiet.
        return
    absl.logging.set_verbosity(absl.logging.ERROR)
