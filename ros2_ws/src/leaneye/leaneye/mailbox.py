"""The detector node's one-frame mailbox: the camera callback leaves the newest frame, the inference
worker takes it. A frame that arrives while another waits replaces it, so a camera faster than
inference costs dropped frames (counted), never a growing queue or growing latency."""

from __future__ import annotations

import threading
from typing import Any


class FrameMailbox:
    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._item: Any = None
        self._closed = False
        self.dropped = 0  # frames replaced before the worker took them

    def put(self, item: Any) -> bool:
        """Leave `item`; True when it replaced a frame that was still waiting (one more drop)."""
        with self._ready:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._ready.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The waiting frame (the slot is emptied), or None after `timeout` seconds or once closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake the worker for good (deactivation); a frame still waiting is discarded, not counted."""
        with self._ready:
            self._closed = True
            self._item = None
            self._ready.notify_all()
