"""Managing webhook endpoints: add, list, enable or disable, rotate the secret, remove, test,
redeliver, and their last deliveries. One set of calls for the console, the API and the CLI."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import Conflict, NotFound, ValidationError
from mailer.hooks import signing
from mailer.hooks.addresses import AddressRefused, check_url, resolve
from mailer.models import HookDelivery, HookEndpoint, HookEvent, HookStatus
from mailer.services import hooks

RECENT = 100  # deliveries shown per endpoint


def parse_events(raw) -> list[str]:
    """Event types from a list or a comma-separated string; `*` or `all` = every type."""
    if raw is None or raw == "":
        raise ValidationError("events", "Choose at least one event type.")
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValidationError("events", "Events must be a list of event types.")
    chosen = {i.strip() for i in items if i.strip()}
    if chosen & {"*", "all"}:
        return list(hooks.EVENT_TYPES)
    unknown = sorted(chosen - set(hooks.EVENT_TYPES))
    if unknown:
        raise ValidationError(
            "events", f"Unknown event type {unknown[0][:60]!r}; known: "
            f"{', '.join(hooks.EVENT_TYPES)}."
        )
    if not chosen:
        raise ValidationError("events", "Choose at least one event type.")
    return [t for t in hooks.EVENT_TYPES if t in chosen]


def check_address(url, *, allow_http: bool, allow_private: bool) -> str:
    """The URL as given if a webhook may go there now, else ValidationError on `url`."""
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("url", "Please enter the endpoint's URL.")
    url = url.strip()
    try:
        _scheme, host, port = check_url(url, allow_http=allow_http)
        resolve(host, port, allow_private=allow_private)
    except AddressRefused as e:
        raise ValidationError("url", str(e)) from None
    return url


def create(session: Session, *, url, events, personal_data: bool = False,
           description: str | None = None, allow_http: bool, allow_private: bool,
           now: datetime | None = None) -> HookEndpoint:
    """A new enabled endpoint with a fresh secret (the caller shows the secret once)."""
    types = parse_events(events)  # before the address: no DNS lookup for a form that fails
    url = check_address(url, allow_http=allow_http, allow_private=allow_private)
    if description is not None and not isinstance(description, str):
        raise ValidationError("description", "The description must be text.")
    description = (description or "").strip()
    if len(description) > 200:
        raise ValidationError("description", "The description is longer than 200 characters.")
    if not isinstance(personal_data, bool):
        raise ValidationError("personal_data", "personal_data must be true or false.")
    endpoint = HookEndpoint(url=url, events=hooks.events_key(types), secret=signing.new_secret(),
                            personal_data=personal_data, enabled=True, description=description,
                            created_at=now or utcnow())
    session.add(endpoint)
    session.flush()
    return endpoint


def get(session: Session, endpoint_id: int) -> HookEndpoint:
    endpoint = session.get(HookEndpoint, endpoint_id)
    if endpoint is None:
        raise NotFound(f"There is no webhook endpoint {endpoint_id}.")
    return endpoint


def all_endpoints(session: Session) -> list[HookEndpoint]:
    return list(session.scalars(select(HookEndpoint).order_by(HookEndpoint.id)))


def remove(session: Session, endpoint_id: int) -> None:
    """Delete the endpoint and its deliveries (their events stay for the other endpoints)."""
    session.delete(get(session, endpoint_id))
    session.flush()


def set_enabled(session: Session, endpoint_id: int, enabled: bool) -> HookEndpoint:
    """Enable (its waiting deliveries go out at the next sweep) or disable it."""
    endpoint = get(session, endpoint_id)
    endpoint.enabled = enabled
    if enabled:
        endpoint.failing_since, endpoint.disabled_reason = None, None
        # What waited while it was disabled is due now, and the sweeper hands it out.
        session.execute(
            update(HookDelivery)
            .where(HookDelivery.endpoint_id == endpoint_id,
                   HookDelivery.status == HookStatus.PENDING)
            .values(next_attempt_at=utcnow(), handed_out_at=None)
            .execution_options(synchronize_session=False)
        )
    else:
        # (Not failing any more as far as the dashboard's warnings go: ops chose this.)
        endpoint.disabled_reason, endpoint.failing_since = "Disabled by an operator.", None
    return endpoint


def rotate_secret(session: Session, endpoint_id: int) -> str:
    """A new secret, effective for every attempt from now on; the old one stops at once."""
    endpoint = get(session, endpoint_id)
    endpoint.secret = signing.new_secret()
    return endpoint.secret


def recent_deliveries(session: Session, endpoint_id: int, limit: int = RECENT):
    """(delivery, event) pairs, newest first."""
    get(session, endpoint_id)
    return [(delivery, event) for delivery, event in session.execute(
        select(HookDelivery, HookEvent)
        .join(HookEvent, HookEvent.id == HookDelivery.event_id)
        .where(HookDelivery.endpoint_id == endpoint_id)
        .order_by(HookDelivery.id.desc())
        .limit(limit)
    )]


def about(event: HookEvent, newsletter_names: dict[str, str]) -> str | None:
    """What an issue or schedule event is about, for the console's list of deliveries: the
    issue or schedule and its newsletter (named by `newsletter_names`, slug → name, as it is
    now; the slug the event carried if the newsletter is gone). None for other events."""
    try:
        data = json.loads(event.payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("issue"), dict):
        item = data["issue"]
        what = f"issue #{item.get('id')} “{item.get('subject') or ''}”"
    elif isinstance(data.get("schedule"), dict):
        item = data["schedule"]
        run = data.get("run") if isinstance(data.get("run"), dict) else {}
        what = f"schedule “{item.get('name') or ''}”" + (
            f", {run['status']}" if run.get("status") else "")
    else:
        return None
    slug = item.get("newsletter")
    return f"{what} · {newsletter_names.get(slug, slug)}" if slug else what


def send_test(session: Session, endpoint_id: int) -> int:
    """A `webhook.test` event to this endpoint only; the delivery's id."""
    endpoint = get(session, endpoint_id)
    if not endpoint.enabled:
        raise Conflict(f"Webhook endpoint {endpoint_id} is disabled: enable it to test it.")
    now = utcnow()
    event = HookEvent(uid=hooks.new_msg_id(), type=hooks.TEST_EVENT, payload='{"test":true}',
                      created_at=now)
    session.add(event)
    session.flush()
    delivery = HookDelivery(event_id=event.id, endpoint_id=endpoint.id, status=HookStatus.PENDING,
                            attempts=0, next_attempt_at=now, handed_out_at=now, created_at=now)
    session.add(delivery)
    session.flush()
    hooks.hand_out(session, delivery.id)
    return delivery.id


def redeliver(session: Session, delivery_id: int, endpoint_id: int | None = None) -> HookDelivery:
    """Send a delivery again (delivered or failed ones too), with the same webhook-id; the
    attempt counter starts over."""
    delivery = session.get(HookDelivery, delivery_id)
    if delivery is None or (endpoint_id is not None and delivery.endpoint_id != endpoint_id):
        raise NotFound(f"There is no webhook delivery {delivery_id}.")
    if delivery.status == HookStatus.SENDING:
        return delivery  # an attempt runs right now
    now = utcnow()
    delivery.status, delivery.attempts = HookStatus.PENDING, 0
    delivery.next_attempt_at, delivery.handed_out_at = now, now
    session.flush()
    hooks.hand_out(session, delivery.id)
    return delivery


def endpoint_dict(endpoint: HookEndpoint, *, secret: bool = False) -> dict:
    """An endpoint as the API and `--json` show it (the secret only when just made)."""
    iso = lambda d: d.isoformat() if d else None  # noqa: E731
    out = {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.event_types,
        "personal_data": endpoint.personal_data,
        "enabled": endpoint.enabled,
        "description": endpoint.description,
        "failing_since": iso(endpoint.failing_since),
        "disabled_reason": endpoint.disabled_reason,
        "created_at": iso(endpoint.created_at),
    }
    if secret:
        out["secret"] = endpoint.secret
    return out


def delivery_dict(delivery: HookDelivery, event: HookEvent) -> dict:
    iso = lambda d: d.isoformat() if d else None  # noqa: E731
    return {
        "id": delivery.id,
        "event": {"id": event.uid, "type": event.type, "created_at": iso(event.created_at)},
        "status": str(delivery.status),
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == HookStatus.PENDING
        else None,
        "last_attempt_at": iso(delivery.last_attempt_at),
        "response_status": delivery.response_status,
        "latency_ms": delivery.latency_ms,
        "response_excerpt": delivery.response_excerpt,
        "error": delivery.error,
        "delivered_at": iso(delivery.delivered_at),
    }
