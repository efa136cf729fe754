"""`UrlSigner`: signed, expiring URL tokens bound to one purpose."""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from panaversity_fs.config import Settings
from panaversity_fs.errors import Forbidden
from panaversity_fs.signing import UrlSigner

KEY = b"k" * 32


def test_round_trip_returns_the_claims_and_expiry() -> None:
    signer = UrlSigner(KEY)
    token, expires = signer.sign("archive", {"book": "b", "scope": "all", "user": None}, 60)
    claims = signer.verify("archive", token)
    assert claims == {"book": "b", "scope": "all", "user": None, "exp": expires}
    assert time.time() + 55 < expires <= time.time() + 61


def test_a_token_is_refused_for_another_purpose_key_or_after_expiry() -> None:
    signer = UrlSigner(KEY)
    token, _ = signer.sign("archive", {"book": "b"}, 60)
    with pytest.raises(Forbidden):
        signer.verify("upload", token)
    with pytest.raises(Forbidden):
        UrlSigner(b"x" * 32).verify("archive", token)
    expired, _ = signer.sign("archive", {"book": "b"}, -1)
    with pytest.raises(Forbidden, match="expired"):
        signer.verify("archive", expired)


def test_editing_the_claims_breaks_the_signature() -> None:
    signer = UrlSigner(KEY)
    token, _ = signer.sign("archive", {"book": "b"}, 60)
    body, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["book"] = "other"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(Forbidden):
        signer.verify("archive", f"{forged}.{mac}")


@given(st.text(max_size=200))
def test_garbage_is_forbidden_never_a_crash(token: str) -> None:
    with pytest.raises(Forbidden):
        UrlSigner(KEY).verify("archive", token)


def test_replicas_sharing_the_configured_secret_accept_each_others_tokens() -> None:
    configured = Settings(url_signing_secret=SecretStr("a shared secret of some considerable length"))
    token, _ = UrlSigner.from_settings(configured).sign("asset-download", {"p": 1}, 60)
    assert UrlSigner.from_settings(configured).verify("asset-download", token)["p"] == 1
    unconfigured = Settings()
    with pytest.raises(Forbidden):
        UrlSigner.from_settings(unconfigured).verify("asset-download", token)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        UrlSigner(b"short")
