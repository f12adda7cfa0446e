"""waitingroom/tokens.py at unit level: what a token carries, and every way it is refused."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from guestqueue.config import SettingsError
from guestqueue.waitingroom.tokens import LEEWAY_S, InvalidToken, TokenSigner

SECRET = "a-token-secret-of-at-least-32-characters!"


def _pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_an_issued_token_carries_its_request_line_audience_and_expiry() -> None:
    signer = TokenSigner(secret=SECRET)
    before = time.time()
    grant = signer.issue("req-1", "shop", ttl_s=60)
    claims = signer.verify(grant.token, "shop")
    assert claims["sub"] == "req-1" and claims["line"] == claims["aud"] == "shop" and claims["jti"] == grant.jti
    assert before + 60 <= grant.expires_at <= before + 62 and claims["exp"] == grant.expires_at
    assert jwt.get_unverified_header(grant.token) == {"alg": "HS256", "kid": "guestqueue", "typ": "JWT"}
    assert grant.payload("") == {"request_id": "req-1", "token": grant.token, "expires_at": grant.expires_at}
    assert grant.payload("https://shop.example/in")["redirect_url"] == "https://shop.example/in"


def test_another_lines_token_an_expired_one_and_a_forged_one_are_refused() -> None:
    signer = TokenSigner(secret=SECRET)
    with pytest.raises(InvalidToken, match="for line 'shop', not 'bank'"):
        signer.verify(signer.issue("r", "shop", 60).token, "bank")
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(signer.issue("r", "shop", -LEEWAY_S - 2).token, "shop")
    forged = TokenSigner(secret="another-secret-of-at-least-32-characters").issue("r", "shop", 60).token
    with pytest.raises(InvalidToken, match="not valid"):
        signer.verify(forged, "shop")
    with pytest.raises(InvalidToken, match="not valid"):
        signer.verify("not.a.token", "shop")


def test_a_token_without_a_required_claim_is_refused() -> None:
    signer = TokenSigner(secret=SECRET)
    bare = jwt.encode({"sub": "r", "aud": "shop", "exp": time.time() + 60}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="not valid"):
        signer.verify(bare, "shop")


def test_a_line_with_its_own_secret_signs_for_itself_only() -> None:
    own = TokenSigner(secret=SECRET, kid="line:shop")
    other = TokenSigner(secret="the-process-wide-secret-of-32-characters!")
    token = own.issue("r", "shop", 60).token
    assert jwt.get_unverified_header(token)["kid"] == "line:shop"
    with pytest.raises(InvalidToken):
        other.verify(token, "shop")


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_a_key_file_signs_with_its_algorithm_and_publishes_only_its_public_key(algorithm: str) -> None:
    private = rsa.generate_private_key(65537, 2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    signer = TokenSigner(key_pem=_pem(private))
    assert signer.algorithm == algorithm
    grant = signer.issue("r", "shop", 60)
    [key] = signer.jwks()["keys"]
    assert key["alg"] == algorithm and key["kid"] == "guestqueue"
    assert "d" not in key, "the private part is never published"
    public = jwt.PyJWK(key).key
    assert jwt.decode(grant.token, public, algorithms=[algorithm], audience="shop")["sub"] == "r"


def test_an_hs256_signer_publishes_no_key() -> None:
    assert TokenSigner(secret=SECRET).jwks() == {"keys": []}


def test_no_key_or_a_wrong_key_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="needs GUEST_TOKEN_SECRET"):
        TokenSigner()
    with pytest.raises(SettingsError, match="not a PEM private key"):
        TokenSigner(key_pem=b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SettingsError, match=r"RSA key .* or a P-256 EC key"):
        TokenSigner(key_pem=_pem(ec.generate_private_key(ec.SECP384R1())))
