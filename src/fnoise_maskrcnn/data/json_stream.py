"""Reading a large COCO JSON one array element at a time.

``json.load`` of COCO's ``instances_train2017.json`` (448 MB, 860k annotations) holds every polygon as
Python floats at once: several GB. Picking a few categories out of it only needs each annotation's ids
and its place in the file. :func:`scan_top_level` walks the top-level object and hands each element of
each top-level array to a callback together with its byte span, so that the caller keeps what it
needs (ids, offsets) and drops the rest; :func:`read_spans` decodes chosen elements again later.

The standard library has no incremental parser, so this is written by hand on top of
``json.JSONDecoder.raw_decode`` (C-accelerated) for the elements themselves. The file is read as
latin-1 so that character offsets are byte offsets; the rare value with non-ASCII text is decoded
again as UTF-8.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .annotations import DatasetError

_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _Reader:
    def __init__(self, path: str | os.PathLike, chunk_size: int) -> None:
        self.path = path
        self.file = open(path, "rb")
        self.chunk_size = chunk_size
        self.buf = ""
        self.pos = 0  # position in buf
        self.base = 0  # file offset of buf[0]
        self.eof = False
        self.decoder = json.JSONDecoder()

    def more(self) -> bool:
        """Append the next chunk to the buffer (dropping what was consumed); False at end of file."""
        data = self.file.read(max(self.chunk_size, len(self.buf) - self.pos))
        if not data:
            self.eof = True
            return False
        self.base += self.pos
        self.buf = self.buf[self.pos :] + data.decode("latin-1")
        self.pos = 0
        return True

    def peek(self) -> str:
        """Next non-whitespace character without consuming it ('' at end of file)."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def error(self, what: str) -> DatasetError:
        return DatasetError(f"{self.path}: not valid JSON ({what} at byte {self.base + self.pos})")

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def closes(self, close: str) -> bool:
        """Consume the ',' or ``close`` after a member or element; True for ``close``."""
        separator = self.peek()
        self.pos += 1
        if separator == close:
            return True
        if separator != ",":
            self.pos -= 1
            raise self.error(f"expected ',' or {close!r}")
        return False

    def elements(self, key: str, on_element: Callable[[str, Any, int, int], None]) -> None:
        """Consume the array at the cursor ('[' next), calling ``on_element`` for each element."""
        self.pos += 1
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            on_element(key, *self.value())
            if self.closes("]"):
                return

    def value(self) -> tuple[Any, int, int]:
        """Decode the next JSON value; return it with its byte span [start, end)."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
                # A number at the very end of the buffer may continue in the next chunk.
                if end < len(self.buf) or self.eof:
                    text = self.buf[self.pos : end]
                    if not text.isascii():  # decoded as latin-1 above: decode again as UTF-8
                        value = json.loads(text.encode("latin-1").decode("utf-8"))
                    start = self.base + self.pos
                    self.pos = end
                    return value, start, self.base + end
            except json.JSONDecodeError as e:
                if self.eof:
                    self.pos = e.pos
                    raise self.error(e.msg) from None
            self.more()


def scan_top_level(
    path: str | os.PathLike,
    on_element: Callable[[str, Any, int, int], None],
    *,
    chunk_size: int = 1 << 22,
) -> dict[str, Any]:
    """Walk a JSON file whose top level is an object.

    For every member whose value is an array, ``on_element(key, element, start, end)`` is called per
    element in file order (``start``/``end``: the element's byte span) and the array is not kept.
    Other members (e.g. ``info``) are returned in a dict. Raises :class:`DatasetError` naming the file
    on malformed JSON.
    """
    try:
        reader = _Reader(path, chunk_size)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read annotation file ({e.strerror or e})") from None
    others: dict[str, Any] = {}
    with reader.file:
        reader.expect("{")
        if reader.peek() == "}":
            return others
        while True:
            key, _, _ = reader.value()
            if not isinstance(key, str):
                raise reader.error("expected a member name")
            reader.expect(":")
            if reader.peek() == "[":
                reader.elements(key, on_element)
            else:
                others[key] = reader.value()[0]
            if reader.closes("}"):
                break
        if reader.peek() != "":
            raise reader.error("extra data after the top-level object")
    return others


def read_spans(path: str | os.PathLike, spans: Iterable[tuple[int, int]]) -> Iterator[Any]:
    """Decode the JSON values at the given byte spans of ``path``, in the order given."""
    with open(path, "rb") as f:
        for start, end in spans:
            f.seek(start)
            yield json.loads(f.read(end - start).decode("utf-8"))
