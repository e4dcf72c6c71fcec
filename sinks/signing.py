"""HMAC-SHA256 signatures of webhook bodies.

Every webhook request to a target with a secret carries::

    X-Driftline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, b"<t>." + body)>

The timestamp is inside the signed message, so a captured request cannot be replayed
with a fresh ``t``; receivers reject signatures older than a tolerance (5 minutes by
default). The scheme is the one Stripe uses for its webhooks.

Examples
--------
>>> header = sign("s3cret", b'{"a": 1}', timestamp=1763900000)
>>> header.split(",")[0]
't=1763900000'
>>> verify("s3cret", b'{"a": 1}', header, now=1763900010)
True
>>> verify("s3cret", b'{"a": 2}', header, now=1763900010)
False
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "sign", "verify"]

SIGNATURE_HEADER = "X-Driftline-Signature"


def _as_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _digest(secret: str | bytes, body: bytes, timestamp: int) -> str:
    message = f"{timestamp}.".encode("ascii") + body
    return hmac.new(_as_bytes(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | float | None = None) -> str:
    """The ``X-Driftline-Signature`` header value for ``body``.

    Parameters
    ----------
    secret
        The shared secret (a str is encoded as UTF-8).
    body
        The exact bytes sent as the request body.
    timestamp
        Unix seconds of the signature (truncated to an integer); default: now.

    Returns
    -------
    str
        ``t=<timestamp>,v1=<hex digest>``.
    """
    t = int(time.time() if timestamp is None else timestamp)
    return f"t={t},v1={_digest(secret, body, t)}"


def verify(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    tolerance_seconds: float = 300.0,
    now: float | None = None,
) -> bool:
    """Whether ``header`` is a valid, fresh signature of ``body`` under ``secret``.

    Parameters
    ----------
    secret
        The shared secret.
    body
        The raw request body, exactly as received (before any JSON parsing).
    header
        The ``X-Driftline-Signature`` header value (None or malformed: False).
    tolerance_seconds
        Largest accepted distance between ``t`` and ``now``, either way.
    now
        Unix seconds to check freshness against; default: the current time.

    Returns
    -------
    bool
        True when one of the header's ``v1`` digests matches (compared in constant time)
        and its timestamp is within the tolerance.

    Notes
    -----
    Several ``v1=`` entries are accepted (any may match), so that a sender can sign with
    an old and a new secret while the secret is rotated.
    """
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = _digest(secret, body, timestamp)
    # Compare against every candidate (no early exit) so timing says nothing either.
    matches = [hmac.compare_digest(expected, c) for c in candidates]
    return any(matches)
