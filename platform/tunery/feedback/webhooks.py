"""Signed webhook deliveries: the URL guard, the signature and one delivery attempt."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from tunery.core.errors import InvalidRequest
from tunery.feedback.models import WebhookDelivery

SIGNATURE_HEADER = "Tunery-Signature"
#: Seconds before the first retry; each further retry waits twice as long.
FIRST_RETRY_SECONDS = 10


class UnsafeUrl(ValueError):
    """A webhook URL Tunery will not call."""


class UnresolvedHost(UnsafeUrl):
    """The URL's host does not resolve (now): refused for a new rule, retried for a delivery."""


def check_url(url: str) -> None:
    """Refuse what is not http(s), and hosts that resolve to loopback, private, link-local or
    reserved addresses (the platform's own network) unless TUNERY_WEBHOOKS_ALLOW_PRIVATE."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeUrl("must be an http:// or https:// URL with a host")
    if settings.TUNERY_WEBHOOKS_ALLOW_PRIVATE:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvedHost(f"its host {parts.hostname!r} does not resolve") from exc
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise UnsafeUrl(
                f"its host resolves to {ip}, a loopback, private or reserved address "
                "(an operator can allow these with TUNERY_WEBHOOKS_ALLOW_PRIVATE)"
            )


def checked_url(url: object, param: str = "webhook_url") -> str:
    if not isinstance(url, str) or len(url) > 2000:
        raise InvalidRequest(f"{param} must be a URL of at most 2000 characters.", param=param)
    try:
        check_url(url)
    except UnsafeUrl as exc:
        raise InvalidRequest(f"{param} is refused: {exc}.", param=param, code="unsafe_webhook_url") from exc
    return url


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>``: a receiver recomputes it with the
    rule's secret and rejects old timestamps (replays)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    #: Seconds to wait before the next attempt; None: no further attempt (delivered or given up).
    retry_in: float | None


def attempt(delivery_id: str) -> Attempt:
    """POST the delivery once. A 2xx delivers it; anything else is retried with exponential
    backoff until TUNERY_WEBHOOK_MAX_ATTEMPTS attempts, then it is failed (kept in the log)."""
    delivery = WebhookDelivery.objects.select_related("rule").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return Attempt(delivery is not None and delivery.status == WebhookDelivery.Status.DELIVERED, None)
    lease = timezone.now() + timedelta(seconds=2 * settings.TUNERY_WEBHOOK_TIMEOUT_SECONDS + 30)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery.pk, status=WebhookDelivery.Status.PENDING, next_attempt_at=delivery.next_attempt_at
    ).update(next_attempt_at=lease)
    if not claimed:  # another worker (a re-sent message) is attempting it
        return Attempt(False, None)
    body = json.dumps(delivery.payload, sort_keys=True).encode()
    status_code, error = None, ""
    try:
        check_url(delivery.url)  # again: a name may resolve elsewhere since the rule was made
        response = httpx.post(
            delivery.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "Tunery-Webhooks/1",
                "Tunery-Delivery": delivery.id,
                SIGNATURE_HEADER: signature(delivery.rule.secret, int(time.time()), body),
            },
            timeout=settings.TUNERY_WEBHOOK_TIMEOUT_SECONDS,
            follow_redirects=False,
        )
        status_code = response.status_code
    except UnresolvedHost as exc:  # DNS may be back at the next attempt
        error = f"unresolved: {exc}"
    except UnsafeUrl as exc:
        error = f"refused: {exc}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
    attempts = delivery.attempts + 1
    retry_in = float(FIRST_RETRY_SECONDS * 2 ** (attempts - 1))
    delivered = status_code is not None and 200 <= status_code < 300
    give_up = not delivered and (attempts >= settings.TUNERY_WEBHOOK_MAX_ATTEMPTS or error.startswith("refused"))
    status = (
        WebhookDelivery.Status.DELIVERED
        if delivered
        else WebhookDelivery.Status.FAILED
        if give_up
        else WebhookDelivery.Status.PENDING
    )
    WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.PENDING, next_attempt_at=lease).update(
        attempts=F("attempts") + 1,
        status=status,
        last_status_code=status_code,
        last_error=error or (f"HTTP {status_code}" if not delivered else ""),
        delivered_at=timezone.now() if delivered else None,
        next_attempt_at=timezone.now() + timedelta(seconds=retry_in),
    )
    return Attempt(delivered, None if delivered or give_up else retry_in)
