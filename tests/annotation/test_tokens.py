"""Both kinds of Label Studio API key: legacy tokens and personal access tokens (JWT, with refresh)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from annotation.auth import token_kind
from annotation.client import Studio
from annotation.errors import AnnotationError

from .conftest import make_shards
from .test_live import hv


def _unsigned_jwt(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def test_token_kind_from_its_shape():
    assert token_kind("0123456789abcdef0123456789abcdef0badc0de") == "legacy"
    assert token_kind(_unsigned_jwt({"token_type": "refresh", "exp": time.time() + 3600})) == "personal"
    with pytest.raises(AnnotationError, match="has expired"):
        token_kind(_unsigned_jwt({"token_type": "refresh", "exp": time.time() - 10}))
    with pytest.raises(AnnotationError, match="not a personal access token"):
        token_kind(_unsigned_jwt({"token_type": "access", "exp": time.time() + 60}))


@pytest.mark.labelstudio
def test_personal_access_token_works_refreshes_and_never_shows(ls_env, tmp_path, capsys, monkeypatch):
    with Studio(ls_env.url, ls_env.token) as legacy:
        assert legacy.auth.kind == "legacy"
        pat = legacy.request("POST", "/api/token/", "creating a personal access token")["token"]
    assert token_kind(pat) == "personal"

    with Studio(ls_env.url, pat) as studio:
        me = studio.check()
        assert studio.auth.kind == "personal" and studio.auth.refreshes == 1
        assert studio.check()["id"] == me["id"] and studio.auth.refreshes == 1  # the access token is reused
        studio.auth._access_expires = time.time()  # as if it were about to expire: renewed before the call
        studio.check()
        assert studio.auth.refreshes == 2
        studio.auth._access = _unsigned_jwt({"token_type": "access", "exp": time.time() + 3600})  # the server: 401
        assert studio.check()["id"] == me["id"] and studio.auth.refreshes == 3  # refreshed once and retried

    # The CLI with the PAT in the environment: push and pull work, the token shows nowhere.
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    make_shards(tmp_path / "in", 2, seed=41)
    code, out = hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", "pat", "--task", "bbox", "--quiet")
    assert code == 0 and "2 tasks created" in out, out
    code, out = hv(capsys, "annotate", "pull", "--project", "pat", "--out", str(tmp_path / "out"), "--quiet")
    assert code == 0 and "2 unfinished" in out, out
    assert pat not in out
    for path in [*tmp_path.rglob("*"), *ls_env.media_root.rglob("*")]:
        if path.is_file():
            assert pat.encode() not in path.read_bytes(), path

    # Revoked: a clear error naming the kind of key, not a traceback.
    with Studio(ls_env.url, ls_env.token) as legacy:
        legacy.request("POST", "/api/token/blacklist/", "revoking the token", ok=(200, 204), json={"refresh": pat})
    code, out = hv(capsys, "annotate", "qa", "--project", "pat")
    assert code == 2 and "refused the personal access token" in out and pat not in out
