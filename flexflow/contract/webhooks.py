"""Webhook signatures: ``X-Webhook-Signature: sha256=<hex>``, HMAC-SHA256 over the raw body.

The HMAC key is the raw 32-byte SHA-256 digest of the API key, so a receiver that knows the key
can verify a delivery without the key ever being sent.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(body: bytes, api_key: str) -> str:
    """The signature header value of a webhook body."""
    key = hashlib.sha256(api_key.encode()).digest()
    return PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str, api_key: str) -> bool:
    """Whether a received body carries a valid signature (compared in constant time)."""
    return hmac.compare_digest(sign(body, api_key), signature)
