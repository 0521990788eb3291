"""A fleet's credentials: a private CA, the SuperLink's TLS certificate, SuperNode keys, the operator token.

`edgelora fleet certs DIR --host NAME --nodes N` writes a fresh folder (it never replaces a file):

    ca.pem, ca.key            the fleet's own certificate authority (ca.key: keep it off the network)
    server.pem, server.key    the SuperLink's TLS certificate, signed by the CA, valid for every --host
                              (plus localhost, 127.0.0.1 and ::1, which Flower's own helpers dial)
    operator.token            the operator's secret: only a Control API call bearing it (a run, a node
                              registration) is served by `edgelora fleet link` (edgelora.fleet.guard)
    nodes/NAME.key, .pub      each device's SuperNode key pair (ECDSA P-384 in OpenSSH format, what
                              `flower-supernode --auth-supernode-private-key` and `flwr supernode register`
                              read); NAME.key goes to that device only, NAME.pub to the operator

Every private file is created with mode 0600. The equivalent openssl/ssh-keygen commands are in
docs/security.md. Uses `cryptography` (a dependency of Flower).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
DAYS = 365
TOKEN_FILE = "operator.token"


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    """Create `path` (never replace it): mode 0600 for secrets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _certificate(subject: str, key, issuer: str, signer, ca: bool, names: list[str] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode key pair folder/NAME.key (private, OpenSSH) and folder/NAME.pub (OpenSSH public key)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _write(folder / f"{name}.key", private, private=True), _write(folder / f"{name}.pub", public + b"\n")


def make_credentials(folder: Path, hosts: list[str], nodes: list[str]) -> dict[str, str]:
    """Write a fleet's credentials into `folder`, which must not exist yet or be empty; returns their paths."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder}: expected a new or empty folder for the fleet's credentials, found "
                         f"{'a file' if not folder.is_dir() else 'files in it'}; choose another folder")
    bad = [n for n in nodes if not n or "/" in n or n.startswith(".")]
    if bad:
        raise ValueError(f"node names: expected plain file names, found {bad}")
    (folder / "nodes").mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("edgelora fleet CA", ca_key, "edgelora fleet CA", ca_key, ca=True)
    names = list(dict.fromkeys([*hosts, *LOCAL_NAMES]))
    server = _certificate(hosts[0] if hosts else "localhost", server_key, "edgelora fleet CA", ca_key, ca=False,
                          names=names)
    out = {"ca": _write(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
           "ca_key": _write(folder / "ca.key", _pem_key(ca_key), private=True),
           "server": _write(folder / "server.pem", server.public_bytes(serialization.Encoding.PEM)),
           "server_key": _write(folder / "server.key", _pem_key(server_key), private=True),
           "token": _write(folder / TOKEN_FILE, secrets.token_urlsafe(32).encode() + b"\n", private=True)}
    for n in nodes:
        out[f"node:{n}"], out[f"node:{n}.pub"] = node_keys(folder / "nodes", n)
    return {k: str(v) for k, v in out.items()}


def read_token(path: Path) -> str:
    """The operator token in `path` (ValueError if missing or too short to be a secret)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"operator token file not found: {path} (edgelora fleet certs DIR makes one)")
    token = path.read_text().strip()
    if len(token) < 32 or any(c.isspace() for c in token):
        raise ValueError(f"{path}: expected one token of at least 32 characters (edgelora fleet certs makes one), "
                         f"found {len(token)} characters")
    return token
