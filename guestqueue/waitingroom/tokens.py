"""Admission tokens: the JWT a guest of an admission line gets when admitted (PyJWT).

HS256 with ``GUEST_TOKEN_SECRET`` (the protected application holds the same
secret), or RS256 / ES256 with ``GUEST_TOKEN_KEY_FILE`` (a PEM private key; the
application needs only the public key, served as JWKS), or the line's own
``token_secret`` (HS256: whoever checks one line's tokens offline cannot mint
another's). Claims: ``sub`` (the request id, which is also the session's id),
``line``, ``aud`` (the line too: any JWT library that is given the audience it
expects refuses another line's token), ``iat``, ``exp`` (the session's end),
``jti``. Every instance of a shared line must sign with the same key, so
nothing is generated here: an admission line without a key is a configuration
error.

PyJWT and cryptography are imported where a token is signed, checked or published (their
import took 0.2 s, a fifth of `guestqueue serve`'s start, which a process without an
admission line need not pay).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..config import Settings, SettingsError

LEEWAY_S = 5  # clocks of the signer and the checker may differ this much


class InvalidToken(Exception):
    """Why a token is not (or no longer) good, in words an application can log."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What an admitted guest receives (the ``admitted`` event)."""

    request_id: str
    token: str
    jti: str
    expires_at: float  # Unix seconds

    def payload(self, redirect_url: str) -> dict[str, Any]:
        out: dict[str, Any] = {"request_id": self.request_id, "token": self.token, "expires_at": self.expires_at}
        if redirect_url:
            out["redirect_url"] = redirect_url
        return out


class TokenSigner:
    def __init__(self, *, secret: str = "", key_pem: bytes | None = None, kid: str = "guestqueue") -> None:
        self.kid = kid
        self._public: Any
        if key_pem is not None:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec, rsa

            try:
                private = serialization.load_pem_private_key(key_pem, password=None)
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"GUEST_TOKEN_KEY_FILE: not a PEM private key without password ({exc})") from None
            if isinstance(private, rsa.RSAPrivateKey):
                self.algorithm = "RS256"
            elif isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1":
                self.algorithm = "ES256"
            else:
                raise SettingsError("GUEST_TOKEN_KEY_FILE: must hold an RSA key (RS256) or a P-256 EC key (ES256)")
            self._signing: Any = private
            self._public = private.public_key()
        elif secret:
            self.algorithm, self._signing, self._public = "HS256", secret, secret
        else:
            raise SettingsError(
                "an admission line needs GUEST_TOKEN_SECRET (HS256, at least 32 characters) or "
                "GUEST_TOKEN_KEY_FILE (RS256/ES256) to sign its tokens"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenSigner:
        if settings.token_key_file:
            try:
                with open(settings.token_key_file, "rb") as file:
                    return cls(key_pem=file.read())
            except OSError as exc:
                raise SettingsError(f"GUEST_TOKEN_KEY_FILE={settings.token_key_file!r}: {exc.strerror}") from None
        return cls(secret=settings.token_secret)

    @classmethod
    def for_line(cls, settings: Settings, token_secret: str, line: str) -> TokenSigner:
        """The line's own secret if it has one, else the process's key."""
        return cls(secret=token_secret, kid=f"line:{line}") if token_secret else cls.from_settings(settings)

    def issue(self, request_id: str, line: str, ttl_s: float) -> Grant:
        import jwt

        now = time.time()
        jti = secrets.token_hex(16)
        expires = math.ceil(now + ttl_s)  # whole seconds (NumericDate), never sooner than asked
        claims = {"sub": request_id, "line": line, "aud": line, "iat": int(now), "exp": expires, "jti": jti}
        token = jwt.encode(claims, self._signing, algorithm=self.algorithm, headers={"kid": self.kid})
        return Grant(request_id, token, jti, float(expires))

    def verify(self, token: str, line: str) -> dict[str, Any]:
        """The token's claims, if it is signed by us, for ``line``, and not expired."""
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._public,
                algorithms=[self.algorithm],
                leeway=LEEWAY_S,
                audience=line,
                options={"require": ["sub", "line", "aud", "iat", "exp", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.InvalidAudienceError:
            other = jwt.decode(token, options={"verify_signature": False}).get("aud")
            raise InvalidToken(f"the token is for line {other!r}, not {line!r}") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"the token is not valid: {exc}") from None
        if claims["line"] != line:
            raise InvalidToken(f"the token is for line {claims['line']!r}, not {line!r}")
        return claims

    def jwks(self) -> dict[str, Any]:
        """The public key as a JSON Web Key Set (empty for HS256: its secret is never published)."""
        if self.algorithm == "HS256":
            return {"keys": []}
        from jwt.algorithms import ECAlgorithm, RSAAlgorithm

        to_jwk = RSAAlgorithm.to_jwk if self.algorithm == "RS256" else ECAlgorithm.to_jwk
        key = json.loads(to_jwk(self._public))
        key.update({"kid": self.kid, "alg": self.algorithm, "use": "sig"})
        return {"keys": [key]}
