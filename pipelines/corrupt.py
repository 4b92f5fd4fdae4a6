"""One policy for unreadable images, shared by every backend.

``on_corrupt='skip'``: the sample at position p of the epoch order is replaced by the next
readable sample of that order (positions p + 1, p + 2, ...), drawn with the replacement's
own key, so the replacement's views are the ones it would get anywhere else. Each replaced
sample counts once in ``Batch.skipped``; each unreadable file is logged once per loader,
by name. ``on_corrupt='error'``: :class:`CorruptImageError` naming the file.
"""
from __future__ import annotations

import logging
import re

MAX_REPLACEMENTS = 16
log = logging.getLogger("pipelines")


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")
_UNIDENTIFIED = re.compile(r"^(?:\w+Error: )?cannot identify image file\b.*$", re.S)


def plain_reason(reason: str | None) -> str:
    """A decoder's reason in plain words: PIL's "cannot identify image file <_io.BytesIO
    object at 0x...>" becomes "not an image PIL can identify"; other object reprs go."""
    reason = (reason or "").strip()
    if _UNIDENTIFIED.match(reason):
        return "not an image PIL can identify"
    reason = _OBJECT_REPR.sub("", reason).strip(" :")
    return reason or "unreadable"


class CorruptImageError(RuntimeError):
    """An image file could not be decoded."""


def replacement_positions(position: int, n: int, max_replacements: int = MAX_REPLACEMENTS):
    """The epoch-order positions tried for the sample at ``position``: itself, then the next ones."""
    return [(position + k) % n for k in range(max_replacements + 1)]


def too_many_unreadable(tried: int, last: str) -> CorruptImageError:
    return CorruptImageError(f"{tried} unreadable images in a row, last {last}; is the dataset damaged?")


def first_readable(order, position: int, read, name_of, files: "CorruptFiles",
                   max_replacements: int = MAX_REPLACEMENTS, first: int = 0):
    """The replacement loop of every backend: ``(read(i), i, replaced)`` for the dataset
    index ``i = order[p]`` at the first position p of :func:`replacement_positions` (from its
    ``first`` entry on) whose sample ``read`` takes. A sample ``files`` already knows as bad
    is passed over unread; one ``read`` raises on is reported to ``files`` by ``name_of(i)``
    (which raises in 'error' mode)."""
    tried = replacement_positions(position, len(order), max_replacements)[first:]
    name = None
    for k, pos in enumerate(tried, first):
        index = int(order[pos])
        name = name_of(index)
        if name in files.bad:
            continue
        try:
            return read(index), index, k > 0
        except Exception as exc:  # decoders raise many types for damaged data
            files.report(name, str(exc) or type(exc).__name__)
    raise too_many_unreadable(len(tried) + first, name)


class CorruptFiles:
    """What a loader knows about its unreadable files: reports them by the policy."""

    def __init__(self, on_corrupt: str, quiet: bool = False):
        if on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        self.on_corrupt, self.quiet = on_corrupt, quiet
        self.bad: dict[str, str] = {}
        self.new: list[tuple[str, str]] = []   # met since the last take_new(), for a worker to pass on

    def report(self, name: str, reason: str | None = None) -> None:
        """Raise in 'error' mode, else remember and log ``name`` the first time it is met
        (``quiet``: a worker's copy, which only remembers; its owner logs what it passes on)."""
        reason = plain_reason(reason)
        if self.on_corrupt == "error":
            raise CorruptImageError(f"cannot decode image {name}: {reason}")
        if name not in self.bad:
            self.bad[name] = reason
            self.new.append((name, reason))
            if not self.quiet:
                log.warning("skipping unreadable image %s (%s); replaced by the next readable sample", name, reason)

    def take_new(self) -> list[tuple[str, str]]:
        """The files first met since the last call."""
        new, self.new = self.new, []
        return new
