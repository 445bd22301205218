"""API keys (pure): a labelled Secret in the gateway's namespace declares one key.

    apiVersion: v1
    kind: Secret
    metadata:
      name: team-a                      # the key's NAME: what metrics, logs and 429 messages show
      labels: {gateway.qwenops.io/key: "true"}
      annotations:
        gateway.qwenops.io/models: "qwen3-0.6b, qwen3-8b"   # served model names, or "*" (the default: none)
        gateway.qwenops.io/requests-per-second: "10"        # token-bucket rate (default 10)
        gateway.qwenops.io/burst: "20"                       # bucket size (default: 2 s of the rate)
        gateway.qwenops.io/tokens-per-minute: "100000"       # prompt + completion tokens (default: no quota)
        gateway.qwenops.io/tokens-per-day: "5000000"
    stringData: {key: "<the API key>"}

The key itself is kept only as an HMAC-SHA256 digest under a random per-process secret, so a heap dump does not
give it back; lookups go through the digest and end in a constant-time comparison.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

LABEL = "gateway.qwenops.io/key"
PREFIX = "gateway.qwenops.io/"
MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 512
MODEL_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
DEFAULT_RATE = 10.0


class InvalidKey(ValueError):
    """A Secret that declares a key badly: the message says what to fix (it never contains the key)."""


@dataclass(frozen=True)
class KeyPolicy:
    name: str
    models: frozenset[str] | None  # None: every model ("*")
    rate: float  # requests per second
    burst: int
    tokens_per_minute: int | None
    tokens_per_day: int | None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


class Hasher:
    """HMAC-SHA256 under a secret of this process (pepper), so digests are useless outside it."""

    def __init__(self, pepper: bytes):
        self.pepper = pepper

    def digest(self, key: str | bytes) -> bytes:
        raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
        return hmac.new(self.pepper, raw, hashlib.sha256).digest()


def _number(annotations: dict[str, str], field: str, kind: type, default, minimum: float, maximum: float):
    raw = annotations.get(PREFIX + field)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise InvalidKey(f"annotation {PREFIX}{field} must be a{'n integer' if kind is int else ' number'}, not {raw.strip()[:40]!r}") from None
    if not (minimum <= value <= maximum):
        raise InvalidKey(f"annotation {PREFIX}{field} must be between {minimum:g} and {maximum:g}, not {value:g}")
    return value


def parse_models(raw: str | None) -> frozenset[str] | None:
    if raw is None or raw.strip() == "":
        return frozenset()
    if raw.strip() == "*":
        return None
    names = [name.strip() for name in raw.replace("\n", ",").split(",") if name.strip()]
    for name in names:
        if not MODEL_NAME.match(name):
            raise InvalidKey(f"annotation {PREFIX}models: {name[:70]!r} is not a served model name (lower-case letters, digits, '.', '_', '-')")
    return frozenset(names)


def parse_secret(secret: dict) -> tuple[KeyPolicy, bytes]:
    """(policy, the raw key) from a Secret as the API returns it (data base64-encoded). Raises InvalidKey."""
    metadata = secret.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    encoded = (secret.get("data") or {}).get("key")
    if not encoded:
        raise InvalidKey("the Secret has no data key 'key' (the API key)")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("data 'key' is not valid base64") from None
    raw = raw.strip()
    if not (MIN_KEY_LENGTH <= len(raw) <= MAX_KEY_LENGTH):
        raise InvalidKey(f"the key must be {MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} bytes long (it has {len(raw)})")
    if any(c < 0x21 or c > 0x7E for c in raw):
        raise InvalidKey("the key must be printable ASCII without spaces (it travels in an HTTP header)")
    rate = _number(annotations, "requests-per-second", float, DEFAULT_RATE, 0.001, 1e6)
    burst = _number(annotations, "burst", int, max(1, round(2 * rate)), 1, 10_000_000)  # default: 2 s worth (10 r/s -> 20)
    policy = KeyPolicy(
        name=metadata.get("name", ""),
        models=parse_models(annotations.get(PREFIX + "models")),
        rate=rate,
        burst=burst,
        tokens_per_minute=_number(annotations, "tokens-per-minute", int, None, 1, 10**12),
        tokens_per_day=_number(annotations, "tokens-per-day", int, None, 1, 10**13),
    )
    return policy, raw


class KeyRing:
    """digest -> policy. Built from the watched Secrets; `find` is what a request asks."""

    def __init__(self, hasher: Hasher):
        self.hasher = hasher
        self.by_digest: dict[bytes, KeyPolicy] = {}
        self.digest_of_secret: dict[str, bytes] = {}

    def put(self, secret_name: str, policy: KeyPolicy, raw_key: bytes) -> None:
        self.remove(secret_name)
        digest = self.hasher.digest(raw_key)
        self.by_digest[digest] = policy
        self.digest_of_secret[secret_name] = digest

    def remove(self, secret_name: str) -> None:
        digest = self.digest_of_secret.pop(secret_name, None)
        if digest is not None and digest not in self.digest_of_secret.values():
            self.by_digest.pop(digest, None)

    def find(self, presented: str) -> KeyPolicy | None:
        digest = self.hasher.digest(presented)
        policy = self.by_digest.get(digest)
        if policy is None:
            return None
        # The dict lookup compares digests, not keys; compare once more in constant time all the same.
        stored = self.digest_of_secret.get(policy.name, digest)
        return policy if hmac.compare_digest(stored, digest) else None

    def __len__(self) -> int:
        return len(self.by_digest)


def bearer(values: list[str]) -> str:
    """The key from the Authorization header values. Raises ValueError (a message for the 401) on tricks."""
    if not values:
        raise LookupError("missing")
    if len(values) > 1:
        raise ValueError("more than one Authorization header")
    value = values[0]
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise ValueError("the scheme must be Bearer")
    token = token.strip()
    if not token or " " in token or "," in token:
        raise ValueError("expected exactly one key after Bearer")
    if len(token) > MAX_KEY_LENGTH:
        raise ValueError("the key is too long")
    return token
