"""Build multipart/related bodies for tests, like h2's FrameFactory builds frames.

factory = MultipartFactory("b0undary")
body = factory.body([Part(b"DICM..."), Part(b"", content_length=False)], epilogue=b"\\r\\n")
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

DICOM = "application/dicom"
# Orthanc: two UUIDs joined by a dash, cut to 70 characters, sent unquoted.
ORTHANC_BOUNDARY = f"{uuid.UUID(int=0x1B2C3D4E5F60718293A4B5C6D7E8F901)}-{uuid.UUID(int=7)}"[:70]
# dcm4chee-arc (RESTEasy): a UUID, unquoted, after a `start` and a quoted `type` parameter.
DCM4CHEE_BOUNDARY = "0a0b4f5e-7c3d-4b2a-9e8f-1a2b3c4d5e6f"


@dataclass
class Part:
    """One body part: its data and header lines (Content-Type and Content-Length by default)."""

    data: bytes
    content_type: str | None = DICOM
    content_length: bool = True
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        """The headers as the parser reports them (names lower-cased)."""
        headers: dict[str, str] = {}
        if self.content_type is not None:
            headers["content-type"] = self.content_type
        if self.content_length:
            headers["content-length"] = str(len(self.data))
        for name, value in self.extra_headers:
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    def encode(self, newline: bytes = b"\r\n") -> bytes:
        lines = []
        if self.content_type is not None:
            lines.append(f"Content-Type: {self.content_type}")
        if self.content_length:
            lines.append(f"Content-Length: {len(self.data)}")
        lines.extend(f"{name}: {value}" for name, value in self.extra_headers)
        head = b"".join(line.encode("latin-1") + newline for line in lines)
        return head + newline + self.data


class MultipartFactory:
    def __init__(self, boundary: str) -> None:
        self.boundary = boundary
        self.dash_boundary = b"--" + boundary.encode("ascii")

    def content_type(self, style: str = "orthanc") -> str:
        if style == "orthanc":
            return f"multipart/related; type={DICOM}; boundary={self.boundary}"
        if style == "dcm4chee":
            return (
                'multipart/related;start="<1@resteasy-multipart>";'
                f'type="{DICOM}"; boundary={self.boundary}'
            )
        if style == "quoted":
            return (
                f'Multipart/Related; boundary="{self.boundary}" ;type="{DICOM}";'
                ' transfer-syntax=*; start-info="x;y"'
            )
        raise ValueError(style)

    def body(
        self,
        parts: Sequence[Part | bytes],
        *,
        preamble: bytes | None = None,
        epilogue: bytes = b"",
        padding: bytes = b"",
        close: bool = True,
    ) -> bytes:
        """Frame encoded parts (a `Part` or raw bytes: header lines, blank line, data)."""
        out = [] if preamble is None else [preamble, b"\r\n"]
        for index, part in enumerate(parts):
            if index:
                out.append(b"\r\n")
            out += [self.dash_boundary, padding, b"\r\n"]
            out.append(part.encode() if isinstance(part, Part) else part)
        if close:
            out += [b"\r\n" if parts else b"", self.dash_boundary, b"--", padding, epilogue]
        return b"".join(out)

    def delimiter_re(self) -> re.Pattern[bytes]:
        """A (real) delimiter: CRLF--boundary then `--`, or padding and CRLF."""
        return re.compile(rb"\r\n" + re.escape(self.dash_boundary) + rb"(?:--|[ \t]{0,1024}\r\n)")

    def defuse(self, payload: bytes) -> bytes:
        """`payload` with every real delimiter in it broken (`--` → `-+`), same length.

        The payload is checked as the parser sees it: after the CRLF that ends the headers and
        before the CRLF of the next delimiter. Near misses (`--boundaryX`) are kept.
        """
        text = bytearray(b"\r\n" + payload + b"\r\n" + self.dash_boundary + b"--")
        pattern = self.delimiter_re()
        while (match := pattern.search(text)) and match.start() < len(payload) + 2:
            text[match.start() + 3] = ord("+")
        return bytes(text[2 : 2 + len(payload)])

    def strip_dash_boundary(self, payload: bytes) -> bytes:
        """`payload` without any CRLF--boundary at all (what naive splitters need)."""
        needle = b"\r\n" + self.dash_boundary
        return (b"\r\n" + payload).replace(needle, b"\r\n-+" + self.dash_boundary[2:])[2:]
