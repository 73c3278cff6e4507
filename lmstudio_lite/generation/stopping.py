"""Stop strings over streamed text: hold back what could still become a stop string."""
from __future__ import annotations

from collections.abc import Iterable

from ..messages import Message


class StopStringHoldback:
    """Feed text deltas in; get back the text that is safe to show.

    Text that could be the start of a stop string is held until the next deltas
    either complete the stop string (then it and everything after it are dropped)
    or rule it out (then it is released). With no stop strings everything passes
    straight through.
    """

    def __init__(self, stops: Iterable[str] = ()):
        if isinstance(stops, str):  # a lone string would otherwise be read as one stop per character
            stops = [stops]
        stops = list(stops)
        for s in stops:
            if not isinstance(s, str):
                raise ValueError(Message("gen.err_stop_type", got=repr(s)))
            if not s:
                raise ValueError(Message("gen.err_stop_empty"))
        self.stops = stops
        self.stopped = False
        self._held = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """-> (text to emit now, whether a stop string was hit). After a hit, returns ("", True)."""
        if not self.stops:  # the usual request: every token's text passes as it is
            return delta, False
        if self.stopped:
            return "", True
        text = self._held + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            # The first stop string to complete ends the text where it begins.
            self.stopped, self._held = True, ""
            return text[:min(hits)], True
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """The held text, at the end of generation (it never became a stop string)."""
        out, self._held = self._held, ""
        return "" if self.stopped else out

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
