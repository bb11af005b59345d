"""The PEM files of --ca-bundle, --cert and --key, checked before any request: libcurl reads
them only when it connects, and says so as a failed handshake (exit 3) without naming the
option. Checked here: that each is a readable file with the PEM block libcurl will look for,
and that OpenSSL can load the CA bundle's certificates (a damaged --cert or --key is still
libcurl's to find).

Without --ca-bundle, the CA bundle named by the environment is trusted, as by the clients a
site has set it up for (a hospital's own CA, or its TLS-inspecting proxy's): httpx reads
SSL_CERT_FILE, requests REQUESTS_CA_BUNDLE (a file, or a hashed CA directory as requests
takes it), curl CURL_CA_BUNDLE. Without any of them, the hashed CA directories SSL_CERT_DIR
names (OpenSSL's, as distributions and httpx read it), instead of certifi's bundle. Else
certifi's bundle."""

from __future__ import annotations

import os
import re
from pathlib import Path

# The variables naming a CA bundle, the first set wins.
CA_BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
PEM_CERTIFICATE = ("CERTIFICATE-----", "PEM certificate")
PEM_PRIVATE_KEY = ("PRIVATE KEY-----", "PEM private key")
# OpenSSL's CA directories, colon-separated; each certificate in one is found by the hash of
# its subject: a link named like `c0dfd775.0` (`openssl rehash` makes them).
CA_DIRECTORY_VARIABLE = "SSL_CERT_DIR"
# requests (through urllib3) takes a directory here as OpenSSL's CA directory, not a bundle.
BUNDLE_OR_DIRECTORY_VARIABLE = "REQUESTS_CA_BUNDLE"
# The signs of a PEM key sealed with a pass phrase: PKCS#8's block, or OpenSSL's legacy header.
_ENCRYPTED = (b"ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")
_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")
# More than any real bundle (Mozilla's is ~200 KiB); a file past it is no PEM bundle.
_MAX_READ = 64 << 20


def tls_files_problem(
    ca_bundle: Path | str | None, cert: Path | str | None, key: Path | str | None
) -> str | None:
    """What is wrong with the TLS files given (or the environment's CA bundle), in one line
    naming the option or variable; or None."""
    found = environment_ca_bundle() if ca_bundle is None else None
    if found is not None and _names_directory(found):
        if (problem := _directories_problem(str(found[1]), found[0])) is not None:
            return problem
        found = None
    elif ca_bundle is None and found is None:
        if (directories := environment_ca_directories()) is not None:
            if (problem := _directories_problem(directories, CA_DIRECTORY_VARIABLE)) is not None:
                return problem
    where = f"${found[0]}" if found else "--ca-bundle"
    ca_bundle = found[1] if found else ca_bundle
    wanted = [(where, ca_bundle, PEM_CERTIFICATE)]
    if cert is not None:
        wanted.append(("--cert", cert, PEM_CERTIFICATE))
        # Without --key, libcurl takes the key from the --cert file.
        holder = ("--key", key) if key is not None else ("--cert", cert)
        wanted.append((*holder, PEM_PRIVATE_KEY))
    for option, path, block in wanted:
        if path is None:
            continue
        path = Path(path)
        problem = pem_file_problem(path, block)
        if problem is None and option == where:
            problem = _trust_problem(path)
        if problem is not None:
            hint = (
                " (give it with --key)" if option == "--cert" and block == PEM_PRIVATE_KEY else ""
            )
            return f"{option} {path}: {problem}{hint}"
    return None


def pem_file_problem(path: Path, block: tuple[str, str]) -> str | None:
    """Why `path` is no readable file holding `block` (PEM_CERTIFICATE, PEM_PRIVATE_KEY), in
    words to follow the option and path; or None."""
    marker, what = block
    return _file_problem(path) or _content_problem(path, marker, what)


def _trust_problem(path: Path) -> str | None:
    """Why OpenSSL cannot trust the CAs of `path`, a file with a PEM certificate in it: a
    block cut short, or one that is no certificate (libcurl says so at the first handshake
    only, as a TLS failure); or None."""
    import ssl  # here: a CA bundle is seldom given, and ssl is no small import

    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:
        return "damaged: a PEM block in it is cut short or is no certificate"
    return None


def environment_ca_bundle() -> tuple[str, Path] | None:
    """The first of CA_BUNDLE_VARIABLES that is set, and the file it names; or None."""
    for name in CA_BUNDLE_VARIABLES:
        if value := os.environ.get(name, "").strip():
            return name, Path(value)
    return None


def environment_ca_directories() -> str | None:
    """What SSL_CERT_DIR names (OpenSSL's colon-separated list of CA directories), or None."""
    return os.environ.get(CA_DIRECTORY_VARIABLE, "").strip() or None


def trusted_cas(ca_bundle: Path | None) -> tuple[Path | None, str | None]:
    """(the CA file, the CA directories) to trust: --ca-bundle, else the file the environment
    names, else its directories; (None, None) for certifi's bundle."""
    if ca_bundle is not None:
        return ca_bundle, None
    if (found := environment_ca_bundle()) is not None:
        return (None, str(found[1])) if _names_directory(found) else (found[1], None)
    return None, environment_ca_directories()


def _names_directory(found: tuple[str, Path]) -> bool:
    """Whether the variable found names a CA directory rather than a bundle."""
    name, path = found
    return name == BUNDLE_OR_DIRECTORY_VARIABLE and path.is_dir()


def _directories_problem(directories: str, variable: str) -> str | None:
    """What is wrong with the list of CA directories `variable` names: a part that is no
    directory (a typo, surely), or not one hashed certificate in them all (OpenSSL would find
    none)."""
    parts = [part for part in directories.split(":") if part]
    hashed = False
    for part in parts:
        try:
            path = Path(part)
            if not path.exists():
                problem = "no such directory"
            elif not path.is_dir():
                problem = "not a directory"
            else:
                problem = None
                hashed = hashed or any(_HASHED_NAME.fullmatch(e.name) for e in os.scandir(path))
        except OSError as exc:
            problem = f"cannot read it ({exc.strerror or exc})"
        if problem is not None:
            return f"${variable} {part}: {problem}"
    if not hashed:
        hint = f"run: openssl rehash {' '.join(parts)}"
        return f"${variable} {directories}: no hashed CA certificate in it ({hint})"
    return None


def _file_problem(path: Path) -> str | None:
    try:
        if not path.exists():
            return "no such file"
        if not path.is_file():
            return "not a file"
    except OSError as exc:
        return f"cannot look at it ({exc.strerror or exc})"
    if not os.access(path, os.R_OK):
        return "cannot read it (permission denied)"
    return None


def _content_problem(path: Path, marker: str, what: str) -> str | None:
    try:
        with path.open("rb") as file:
            text = file.read(_MAX_READ)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if marker.encode() not in text:
        return f"no {what} in it"
    if marker == PEM_PRIVATE_KEY[0] and any(sign in text for sign in _ENCRYPTED):
        # OpenSSL would ask for its pass phrase on the terminal, where a signal cannot stop it
        return (
            "the key is encrypted (it needs a pass phrase): decrypt it first, e.g. "
            f"openssl pkey -in {path} -out plain.key (and keep that file private)"
        )
    return None
