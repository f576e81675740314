"""ed25519 bundle signatures: valid, tampered, wrong key, unsigned, malformed keys and signature files."""

from __future__ import annotations

import json

import pytest

from edgepack.bundle.signing import (
    SIGNATURE,
    check_signature,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_bundle,
)
from edgepack.errors import ConfigError, VerificationError


@pytest.fixture
def keys(tmp_path):
    private, public = tmp_path / "keys" / "key.pem", tmp_path / "keys" / "key.pub.pem"
    generate_keypair(private, public)
    return private, public


@pytest.fixture
def bundle(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 2, "artifacts": ["x86/model.onnx"]}))
    return folder


def test_a_signed_bundle_verifies_with_its_public_key(keys, bundle):
    private, public = keys
    sign_bundle(bundle, load_private_key(private))
    check = check_signature(bundle, public)
    assert check.verified and check.signed
    assert check.line().startswith("signature: valid, ed25519 key ")
    assert oct(private.stat().st_mode & 0o777) == "0o600"


def test_an_edited_manifest_breaks_the_signature(keys, bundle):
    private, public = keys
    sign_bundle(bundle, load_private_key(private))
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace("model.onnx", "evil.onnx"))
    with pytest.raises(VerificationError, match="signature does not match: the manifest was changed"):
        check_signature(bundle, public)


def test_another_key_is_refused_by_fingerprint(keys, bundle, tmp_path):
    private, _ = keys
    other_private, other_public = tmp_path / "other.pem", tmp_path / "other.pub.pem"
    generate_keypair(other_private, other_public)
    sign_bundle(bundle, load_private_key(private))
    with pytest.raises(VerificationError, match="signed by key .* not by .*other.pub.pem"):
        check_signature(bundle, other_public)


def test_a_re_signed_manifest_with_a_forged_fingerprint_fails(keys, bundle, tmp_path):
    private, public = keys
    forger_private, forger_public = tmp_path / "forger.pem", tmp_path / "forger.pub.pem"
    generate_keypair(forger_private, forger_public)
    sign_bundle(bundle, load_private_key(forger_private))
    record = json.loads((bundle / SIGNATURE).read_text())
    genuine = check_signature(bundle, forger_public).key_fingerprint
    sign_bundle(bundle, load_private_key(private))
    record["public_key_sha256"] = json.loads((bundle / SIGNATURE).read_text())["public_key_sha256"]
    (bundle / SIGNATURE).write_text(json.dumps(record))  # forger's signature, claiming the genuine key
    assert genuine != record["public_key_sha256"]
    with pytest.raises(VerificationError, match="signature does not match"):
        check_signature(bundle, public)


def test_unsigned_bundles(keys, bundle):
    _, public = keys
    check = check_signature(bundle, None)
    assert not check.signed and "only detect accidental change" in check.line()
    with pytest.raises(VerificationError, match="not signed .*--key was given"):
        check_signature(bundle, public)


def test_signed_but_unchecked_says_so(keys, bundle):
    private, _ = keys
    sign_bundle(bundle, load_private_key(private))
    assert "present but not checked (give --key" in check_signature(bundle, None).line()


def test_malformed_signature_file(keys, bundle):
    _, public = keys
    (bundle / SIGNATURE).write_text("{not json")
    with pytest.raises(VerificationError, match="unreadable signature file"):
        check_signature(bundle, public)
    (bundle / SIGNATURE).write_text(json.dumps({"algorithm": "ed25519"}))
    with pytest.raises(VerificationError, match="not an edgepack signature file"):
        check_signature(bundle, public)


def test_key_file_errors_are_one_line_config_errors(keys, tmp_path):
    private, public = keys
    with pytest.raises(ConfigError, match="private key not found"):
        load_private_key(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        load_private_key(public)
    with pytest.raises(ConfigError, match="this is a private key: give the .pub.pem file"):
        load_public_key(private)
    with pytest.raises(ConfigError, match="already exists"):
        generate_keypair(private, tmp_path / "new.pub.pem")


def test_encrypted_key_needs_its_passphrase(tmp_path):
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(private, public, passphrase="s3cret")
    with pytest.raises(ConfigError, match="EDGEPACK_KEY_PASSPHRASE"):
        load_private_key(private)
    assert load_private_key(private, "s3cret") is not None
