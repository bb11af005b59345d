"""The embedded DICOMweb server: QIDO-RS and WADO-RS over a folder of DICOM files, or over a
virtual archive generated from a seed (`VirtualArchive`: also what tests compare against).

For the demo, the tests and the benchmarks; hypercorn runs it (HTTP/1.1, h2c, h2 over TLS).
It shares no code with the download client, so it can never hide a client bug.
"""

from .app import ASGIApp, create_app
from .options import PROFILES, ServerOptions
from .run import running_server, serve_forever
from .virtual import VirtualArchive
from .virtual_spec import VirtualSpec

__all__ = [
    "ASGIApp",
    "PROFILES",
    "ServerOptions",
    "VirtualArchive",
    "VirtualSpec",
    "create_app",
    "running_server",
    "serve_forever",
]
