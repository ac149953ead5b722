"""Who signs: the user's own certificate and key when configured, otherwise a local identity made on first use.

Configuration (first match wins):
  1. environment: ``SPACETIME_SIGN_CERT`` (PEM chain, end-entity first) and ``SPACETIME_SIGN_KEY`` (PEM private key),
     optional ``SPACETIME_SIGN_ALG`` (es256 default; es384, es512, ps256, ps384, ps512, ed25519) and
     ``SPACETIME_SIGN_TSA_URL`` (a timestamp authority);
  2. ``signing.toml`` in the config folder with keys ``cert``, ``key``, ``alg``, ``tsa_url`` (paths relative to it);
  3. a local identity in ``<config>/local-identity/``: a root CA (``root.pem``, the trust anchor to give readers) and an
     ES256 end-entity certificate (key usage digitalSignature, EKU emailProtection, Authority Key Identifier, not a
     CA, valid 20 years) with its key (``signer.key``). The root's private key is used once to issue the end-entity
     certificate and never stored, so nothing can issue further certificates under that root. No timestamp
     authority is used offline, so signatures are checked against the certificate's validity period.

The config folder: ``SPACETIME_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/spacetime``, else ``~/.config/spacetime``
(``%APPDATA%\\spacetime`` on Windows). Files are created 0600 inside a 0700 folder, and never copied into outputs.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..model.errors import SpacetimeRuntimeError, SpacetimeValueError

LOCAL_DIR = "local-identity"
ROOT_FILE, CHAIN_FILE, KEY_FILE = "root.pem", "signer-chain.pem", "signer.key"
ALGS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
VALID_DAYS = 20 * 365


def config_dir() -> Path:
    env = os.environ.get("SPACETIME_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "spacetime"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "spacetime"


@dataclass
class SigningIdentity:
    chain_pem: bytes                  # end-entity certificate first, then intermediates (and optionally the root)
    key_pem: bytes
    alg: str = "es256"
    tsa_url: Optional[str] = None
    source: str = "local"             # "local" (generated here) or "user" (configured)
    root_pem: Optional[bytes] = None  # the local root (a trust anchor for our own files)

    def signer(self):
        import c2pa
        return c2pa.Signer.from_info(c2pa.C2paSignerInfo(self.alg.encode(), self.chain_pem, self.key_pem,
                                                         self.tsa_url.encode() if self.tsa_url else None))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SpacetimeValueError(f"{what} {str(path)!r} cannot be read ({exc.strerror}); set it to a PEM file") \
            from None


def _check_alg(alg: str, where: str) -> str:
    alg = (alg or "es256").lower()
    if alg not in ALGS:
        raise SpacetimeValueError(f"{where}={alg!r} is not supported; allowed: {', '.join(ALGS)}")
    return alg


def user_identity() -> Optional[SigningIdentity]:
    """The user's configured certificate and key, or None."""
    cert, key = os.environ.get("SPACETIME_SIGN_CERT"), os.environ.get("SPACETIME_SIGN_KEY")
    if cert or key:
        if not (cert and key):
            raise SpacetimeValueError("SPACETIME_SIGN_CERT and SPACETIME_SIGN_KEY must be set together (a PEM "
                                      "certificate chain and its private key)")
        return SigningIdentity(_read(Path(cert), "SPACETIME_SIGN_CERT"), _read(Path(key), "SPACETIME_SIGN_KEY"),
                               _check_alg(os.environ.get("SPACETIME_SIGN_ALG", "es256"), "SPACETIME_SIGN_ALG"),
                               os.environ.get("SPACETIME_SIGN_TSA_URL") or None, "user")
    cfg = config_dir() / "signing.toml"
    if cfg.is_file():
        import tomllib
        try:
            data = tomllib.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpacetimeValueError(f"{cfg.name} in the config folder is not valid TOML: {exc}") from None
        if "cert" not in data or "key" not in data:
            raise SpacetimeValueError(f"{cfg.name} needs 'cert' and 'key' (paths of PEM files); found: "
                                      f"{', '.join(sorted(data)) or 'nothing'}")
        return SigningIdentity(_read(cfg.parent / data["cert"], "signing.toml cert"),
                               _read(cfg.parent / data["key"], "signing.toml key"),
                               _check_alg(data.get("alg", "es256"), "signing.toml alg"), data.get("tsa_url") or None,
                               "user")
    return None


def local_identity(create: bool = True) -> Optional[SigningIdentity]:
    """The local identity, generated on first use (``create``); None when absent and not created."""
    d = config_dir() / LOCAL_DIR
    if not (d / KEY_FILE).is_file():
        if not create:
            return None
        _create_local(d)
    return SigningIdentity((d / CHAIN_FILE).read_bytes(), (d / KEY_FILE).read_bytes(), "es256", None, "local",
                           (d / ROOT_FILE).read_bytes())


def signing_identity() -> SigningIdentity:
    return user_identity() or local_identity(create=True)


def local_root_pem() -> Optional[bytes]:
    """The local root certificate (PEM) when one exists: the anchor under which our own files read Trusted."""
    p = config_dir() / LOCAL_DIR / ROOT_FILE
    return p.read_bytes() if p.is_file() else None


def _create_local(final: Path):
    """Make the identity in a private temporary folder, then rename it into place (another process that raced us
    keeps its own and we use that)."""
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SpacetimeRuntimeError(f"cannot create the config folder {str(parent)!r} for the signing identity "
                                    f"({exc.strerror}); set SPACETIME_CONFIG_DIR to a writable folder") from None
    tmp = Path(tempfile.mkdtemp(prefix=".identity-", dir=parent))          # mkdtemp: mode 0700
    try:
        files = _generate()
        for name, data in files.items():
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / KEY_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()


def _generate() -> dict:
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Spacetime (local, self-issued)")])

    def usage(sign=False, ca=False):
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                             encipher_only=False, decipher_only=False)
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(name("Spacetime local root CA"))
            .issuer_name(name("Spacetime local root CA")).public_key(root_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=VALID_DAYS + 365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("Spacetime local signer")).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(sign=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {ROOT_FILE: root.public_bytes(pem),
            CHAIN_FILE: cert.public_bytes(pem) + root.public_bytes(pem),
            KEY_FILE: key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}
