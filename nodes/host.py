"""The one place that talks to ComfyUI: output folders, progress bars with cancellation, model management,
model folders. Every ComfyUI import is lazy; outside ComfyUI (headless runner, CLI, tests) the same functions fall
back to small headless equivalents.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Callable, Optional

_headless_cancel = threading.Event()
_progress_hook: Optional[Callable[[int, int, str], None]] = None


def in_comfy() -> bool:
    """True when running inside a ComfyUI server (its modules are already imported)."""
    return "comfy.model_management" in sys.modules and "folder_paths" in sys.modules


def _folder_paths():
    import folder_paths  # noqa: WPS433 (ComfyUI module)
    return folder_paths


def output_directory() -> Path:
    if in_comfy():
        return Path(_folder_paths().get_output_directory())
    return Path(os.environ.get("SPACETIME_OUTPUT_DIR", "output")).absolute()


def temp_directory() -> Path:
    if in_comfy():
        return Path(_folder_paths().get_temp_directory())
    d = Path(os.environ.get("SPACETIME_TEMP_DIR", output_directory() / ".temp"))
    return d


def input_directory() -> Path:
    if in_comfy():
        return Path(_folder_paths().get_input_directory())
    return Path(os.environ.get("SPACETIME_INPUT_DIR", "input")).absolute()


class Interrupted(RuntimeError):
    """Raised when the user cancels (headless: ``request_cancel()``)."""


def request_cancel():
    _headless_cancel.set()


def clear_cancel():
    _headless_cancel.clear()


def check_interrupted():
    """Raise if the user asked to stop (ComfyUI's Cancel button, or ``request_cancel()`` headless)."""
    if in_comfy():
        import comfy.model_management as mm
        mm.throw_exception_if_processing_interrupted()
    elif _headless_cancel.is_set():
        _headless_cancel.clear()
        raise Interrupted("cancelled")


def set_progress_hook(hook: Optional[Callable[[int, int, str], None]]):
    """Headless: a function (done, total, label) called on every progress update (the CLI draws a bar with it)."""
    global _progress_hook
    _progress_hook = hook


class Progress:
    """A progress bar for one node's work; every update also checks for cancellation."""

    def __init__(self, total: int, label: str = ""):
        self.total, self.label, self.done = max(1, int(total)), label, 0
        self._bar = None
        if in_comfy():
            import comfy.utils
            self._bar = comfy.utils.ProgressBar(self.total)

    def update(self, n: int = 1, preview=None):
        self.done = min(self.total, self.done + n)
        if self._bar is not None:
            if preview is not None:
                self._bar.update_absolute(self.done, self.total, preview)
            else:
                self._bar.update_absolute(self.done, self.total)
        elif _progress_hook is not None:
            _progress_hook(self.done, self.total, self.label)
        check_interrupted()
