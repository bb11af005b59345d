"""Everything the embedded server can be told: folder or virtual archive, address, TLS, vendor
profile, test knobs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .virtual_spec import VirtualSpec

PROFILES = ("standard", "orthanc", "dcm4chee")


@dataclass(frozen=True)
class ServerOptions:
    """Options of one server. The knobs after `profile` are off by default; tests turn them on.

    `token_expires_after` counts requests per token value: `token` and any `token-<suffix>`
    are accepted, each for N requests, so a client's refresh command can mint `token-2`, ...
    `drop_rate` is the fraction of WADO bodies that `drop_after_bytes` cuts (all by default).
    """

    root: Path | None = None  # a folder of DICOM files, or else:
    virtual: VirtualSpec | None = None  # a generated archive (dlstudy serve --virtual N)
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    tls_cert: Path | None = None
    tls_key: Path | None = None
    http3: bool = False  # HTTP/3 too (QUIC, UDP on the same port): needs TLS and aioquic
    profile: str = "standard"  # standard | orthanc | dcm4chee
    max_page_size: int | None = None  # QIDO cap; truncation answered with Warning: 299
    ignore_offset: bool = False  # mimic static DICOMweb: offset ignored
    silent_cap: bool = False  # max_page_size cuts pages without a Warning: 299 (as some archives)
    latency: float = 0.0  # seconds added per request
    fault_rate: float = 0.0  # fraction of WADO responses answered `fault_status`
    fault_status: int = 503  # any 4xx/5xx: what the client under test should make of it
    retry_after: int = 1
    drop_after_bytes: int | None = None  # cut a WADO body after N bytes (connection dropped)
    token: str | None = None  # require Authorization: Bearer <token>
    token_expires_after: int | None = None  # a token stops working (401) after N requests
    seed: int = 0  # for the fault RNG, so runs are reproducible
    # Close each connection after N requests: HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY
    # while other streams may still be in flight (hypercorn's keep_alive_max_requests).
    max_requests_per_connection: int | None = None
    drop_rate: float = 1.0
    # QIDO answers without NumberOfStudyRelated*/NumberOfSeriesRelatedInstances, as some
    # archives send them: a client then cannot check a listing or a study by its counts.
    no_counts: bool = False

    def __post_init__(self) -> None:
        if (self.root is None) == (self.virtual is None):
            raise ValueError("serve either a folder or a virtual archive")
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose one of {PROFILES}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.http3 and self.tls_cert is None:
            raise ValueError("HTTP/3 runs over TLS: it needs a certificate and a key")
        for name in ("fault_rate", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in (
            "max_page_size",
            "drop_after_bytes",
            "token_expires_after",
            "max_requests_per_connection",
        ):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "max_page_size" else 0):
                least = "1 or more" if name == "max_page_size" else "0 or more"
                raise ValueError(f"{name} must be {least}, got {value}")
        for name in ("latency", "retry_after"):
            if not 0 <= getattr(self, name) < math.inf:  # (nan fails both comparisons)
                raise ValueError(f"{name} must be 0 or more and finite, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0 to 65535, got {self.port}")
        if not 400 <= self.fault_status <= 599:
            raise ValueError(
                f"fault_status must be an error status, 400 to 599, got {self.fault_status}"
            )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
