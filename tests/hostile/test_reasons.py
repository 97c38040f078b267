"""Issue 11, item 14: docs/protocol.md lacked the 4401 reason `token issued in the
future`. Every reason the server can close 4401 (or answer 401) with is listed there."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from realtime.auth.dev import DEV_ALGORITHM, DEV_ISSUER, DevIssuer
from realtime.settings import Settings
from tests.conftest import ROOT
from tests.helpers import auth_header, call

ME = 41


def _documented_4401_reasons() -> str:
    text = (ROOT / "docs" / "protocol.md").read_text()
    start = text.index("- **Rejected token**")
    return " ".join(text[start : text.index("\n- **", start + 1)].split())


def _token(settings: Settings, issuer: DevIssuer, **changes: Any) -> str:
    key = RSAKey.import_key(json.loads(Path(settings.dev_key_file).read_text()))
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "aud": settings.keycloak_audience,
        "sub": "alice",
        "typ": "Bearer",
        "iat": now,
        "exp": now + 600,
        "tenant_id": "acme",
        "realm_access": {"roles": ["user"]},
        **changes,
    }
    header = {"alg": DEV_ALGORITHM, "kid": issuer.kid}
    return jwt.encode(header, claims, key, algorithms=[DEV_ALGORITHM])


def test_a_token_issued_in_the_future_is_refused_with_its_documented_reason(
    client: TestClient, settings: Settings, issuer: DevIssuer
) -> None:
    ahead = _token(settings, issuer, iat=int(time.time()) + 600)
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/ws", headers=auth_header(ahead)) as ws,
    ):
        ws.receive_json()
    assert (closed.value.code, closed.value.reason) == (4401, "token issued in the future")
    refused = client.get("/me", headers=auth_header(ahead))
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "token issued in the future"
    assert "`token issued in the future`" in _documented_4401_reasons()
    # control: the same claims issued now are served
    with client.websocket_connect("/ws", headers=auth_header(_token(settings, issuer))) as ws:
        assert call(ws, ME)["data"]["sub"] == "alice"


def _reasons_in_source() -> set[str]:
    """Every AuthError reason written in realtime/ (f-string fields read as `<name>`), and
    the reasons the verifier maps claims to; login's `invalid credentials` is not a 4401."""
    reasons: set[str] = set()
    for path in (ROOT / "realtime").rglob("*.py"):
        if path.name == "login.py":
            continue
        source = path.read_text()
        reasons |= set(re.findall(r'AuthError\(f?"([^"]+)"\)', source))
        if path.name == "verifier.py":
            mapping = source[source.index("def _claim_reason") :]
            reasons |= set(re.findall(r'": "([^"]+)"', mapping))
            reasons |= set(re.findall(r'f"(invalid claim \{claim\})"', mapping))
    named = {re.sub(r"\{[^}]+\}", "<name>", reason) for reason in reasons}
    # `invalid claim sub` is documented as an instance of `invalid claim <name>`
    return {re.sub(r"^(missing|invalid) claim \w+$", r"\1 claim <name>", r) for r in named}


def test_every_reason_the_server_can_send_is_documented() -> None:
    reasons = _reasons_in_source()
    assert {"token issued in the future", "missing claim <name>", "invalid claim <name>"} <= reasons
    documented = _documented_4401_reasons()
    missing = sorted(r for r in reasons if f"`{r}`" not in documented)
    assert missing == [], missing
