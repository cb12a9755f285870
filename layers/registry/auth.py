"""HTTP authentication as registries use it: pure functions, no I/O.

- `parse_challenges(header)`: the `WWW-Authenticate` value → `Challenge`s
  (RFC 7235: a scheme, then `key=value` or `key="quoted value"` pairs; several
  challenges may share one header).
- `basic_header(user, password)`: the `Authorization` value for Basic.
- `token_params(challenge, scopes)`: the query of the bearer token request
  (distribution's token protocol: `service` and one `scope` per scope).
- `parse_token(body)`: the token server's JSON → (token, lifetime seconds).
- `scope(repository, actions)`: `repository:NAME:pull,push`.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*')
_SCHEME = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")
DEFAULT_TOKEN_LIFETIME = 60


class ChallengeError(ValueError):
    pass


@dataclass(frozen=True)
class Challenge:
    scheme: str                               # lowercase: "basic", "bearer"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_challenges(header: str) -> list[Challenge]:
    """All challenges in one `WWW-Authenticate` value; ChallengeError when
    it does not parse."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = _SCHEME.match(text, pos)
        if not m:
            raise ChallengeError(f"no auth scheme at {text[pos:]!r}")
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(text):
            p = _PARAM.match(text, pos)
            if not p:
                break
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
            if pos < len(text) and text[pos] == ",":
                pos += 1
        out.append(Challenge(scheme, params))
        while pos < len(text) and text[pos] in " ,":
            pos += 1
    return out


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


def token_params(challenge: Challenge, scopes: list[str]) -> list[tuple[str, str]]:
    params = []
    if challenge.params.get("service"):
        params.append(("service", challenge.params["service"]))
    for s in scopes:
        params.append(("scope", s))
    return params


def parse_token(body: bytes) -> tuple[str, int]:
    """(token, lifetime in seconds); ChallengeError when there is none."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise ChallengeError("token answer is not JSON") from None
    token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise ChallengeError("token answer holds no token")
    lifetime = doc.get("expires_in")
    if not isinstance(lifetime, int) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return token, lifetime
