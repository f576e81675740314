"""Signed bundles: an ed25519 signature over manifest.json, which holds the sha256 of every other file.

Checksums alone catch accidental change (a truncated copy, a flipped bit); anyone who edits an
artifact can also rewrite its checksum. A signature made with the packer's private key, checked
with the public key the user already trusts, also catches deliberate change: editing any listed
file breaks its checksum, and editing the manifest breaks the signature. `verify` also refuses
files the manifest does not list, so nothing can be slipped in beside them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgepack.errors import ConfigError, VerificationError

SIGNATURE = "signature.json"
ALGORITHM = "ed25519"
SIGNED_FILE = "manifest.json"
PASSPHRASE_ENV = "EDGEPACK_KEY_PASSPHRASE"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError as exc:  # a dependency of edgepack; only a broken install lands here
        raise ConfigError("signing needs the 'cryptography' package: pip install cryptography") from exc
    return serialization


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from exc


def load_private_key(path: Path, passphrase: Optional[str] = None) -> Any:
    """An ed25519 private key from a PEM (PKCS#8) file; a passphrase-protected key needs `passphrase`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    serialization = _crypto()
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase.encode() if passphrase else None)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain key
        raise ConfigError(f"{path}: {exc}; set {PASSPHRASE_ENV} for an encrypted key") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM private key ({str(exc).splitlines()[0]}); create one with "
                          "`edgepack keygen`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an ed25519 private key, found {type(key).__name__.lstrip('_')}")
    return key


def load_public_key(path: Path) -> Any:
    """An ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    serialization = _crypto()
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        hint = " (this is a private key: give the .pub.pem file)" if b"PRIVATE KEY" in data else ""
        raise ConfigError(f"{path}: not a PEM public key{hint}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: expected an ed25519 public key, found {type(key).__name__.lstrip('_')}")
    return key


def _raw_public(key: Any) -> bytes:
    serialization = _crypto()
    raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def fingerprint(public_key: Any) -> str:
    """sha256 of the raw 32-byte public key, in hex: names the key in the signature file and messages."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()


def generate_keypair(private_path: Path, public_path: Path, passphrase: Optional[str] = None) -> str:
    """Write a new ed25519 key pair as PEM files (the private one 0600); returns the fingerprint."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    serialization = _crypto()
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path}: already exists; edgepack does not overwrite keys")
    key = Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.touch(mode=0o600)
    private_path.write_bytes(private_pem)
    public_path.write_bytes(public_pem)
    return fingerprint(key.public_key())


def sign_bundle(folder: Path, private_key: Any) -> Path:
    """Sign `folder`/manifest.json; writes signature.json beside it and returns its path."""
    manifest = (folder / SIGNED_FILE).read_bytes()
    record = {
        "algorithm": ALGORITHM,
        "signed_file": SIGNED_FILE,
        "signed_file_sha256": hashlib.sha256(manifest).hexdigest(),
        "public_key_sha256": fingerprint(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(manifest)).decode("ascii"),
    }
    path = folder / SIGNATURE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class SignatureCheck:
    """What `verify` can say about who made a bundle."""

    signed: bool
    verified: bool
    key_fingerprint: Optional[str]

    def line(self) -> str:
        """One terminal line for the verdict."""
        if self.verified:
            return f"signature: valid, ed25519 key {self.key_fingerprint[:16] if self.key_fingerprint else ''}"
        if self.signed:
            return ("signature: present but not checked (give --key PUBLIC.pem to check it); checksums only "
                    "detect accidental change")
        return "signature: none (unsigned bundle); checksums only detect accidental change, not tampering"


def _read_record(folder: Path) -> dict:
    path = folder / SIGNATURE
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{path}: unreadable signature file ({exc})") from exc
    keys = {"algorithm", "signed_file", "public_key_sha256", "signature"}
    if not isinstance(record, dict) or not keys <= set(record):
        raise VerificationError(f"{path}: not an edgepack signature file (expected keys {', '.join(sorted(keys))})")
    if record["algorithm"] != ALGORITHM or record["signed_file"] != SIGNED_FILE:
        raise VerificationError(f"{path}: unsupported signature ({record['algorithm']} over {record['signed_file']})")
    return record


def check_signature(folder: Path, public_key_path: Optional[Path]) -> SignatureCheck:
    """Check the bundle's signature against the public key; a VerificationError says what failed.

    With a key, an unsigned bundle fails (the user asked for provenance). Without one, a signed
    bundle is reported as unchecked and an unsigned one as unsigned.
    """
    signed = (folder / SIGNATURE).exists()
    if public_key_path is None:
        record = _read_record(folder) if signed else None
        return SignatureCheck(signed=signed, verified=False,
                              key_fingerprint=record["public_key_sha256"] if record else None)
    public_key = load_public_key(public_key_path)
    expected = fingerprint(public_key)
    if not signed:
        raise VerificationError(f"{folder}: bundle is not signed ({SIGNATURE} missing), but --key was given")
    record = _read_record(folder)
    if record["public_key_sha256"] != expected:
        raise VerificationError(f"{folder / SIGNATURE}: signed by key {record['public_key_sha256'][:16]}, not by "
                                f"{public_key_path} ({expected[:16]})")
    from cryptography.exceptions import InvalidSignature

    try:
        signature = base64.b64decode(record["signature"], validate=True)
        public_key.verify(signature, (folder / SIGNED_FILE).read_bytes())
    except (InvalidSignature, ValueError) as exc:
        raise VerificationError(f"{folder / SIGNED_FILE}: signature does not match: the manifest was changed after "
                                "signing") from exc
    return SignatureCheck(signed=True, verified=True, key_fingerprint=expected)
