"""POST /webhooks/<provider>: bounces and complaints the sending providers report.

Each provider authenticates its own way (bounces.providers, bounces.sns); a request that
does not authenticate is answered 401 or 403 and changes nothing, a provider with no key
configured is 404, a body over MAILER_PROVIDER_WEBHOOK_MAX_BYTES is 413 and one that is not the
provider's JSON is 400. Errors are JSON. A database that cannot take the reports now, or
an SNS certificate host that cannot be reached, is a 503, which every provider retries. An event already recorded is answered 200 again, so a
provider's retry is recorded once.
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from mailer.bounces import Report, Source, providers, sns
from mailer.bounces.providers import Malformed, Refused, Unavailable
from mailer.clock import utcnow
from mailer.db import db
from mailer.runtime import runtime
from mailer.services import webhooks
from mailer.web.errors import error_response
from mailer.web.extensions import csrf

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
csrf.exempt(bp)

_sns_certs: dict[tuple, sns.Certificates] = {}
_sendgrid_keys: dict[str, object] = {}


def _json() -> object:
    try:
        return json.loads(request.get_data(cache=True))
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the body is not JSON") from None


def _record(provider: str, reports: list[Report], token: str | None = None):
    rt = runtime()
    now = utcnow()
    try:
        if token is not None and not webhooks.remember_token(db.session, provider, token, now):
            db.session.rollback()
            raise Refused("this request was already received (a replayed token)", 403)
        counts = webhooks.record_reports(db.session, rt.settings, Source(provider), reports, now)
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()
        log.exception("could not record the %s webhook's reports", provider)
        return error_response(503, "The reports cannot be recorded now; please retry.")
    log.info("%s webhook: %s", provider, counts)
    return jsonify({"received": len(reports), **counts})


def _refused(provider: str, e: Refused):
    log.warning("%s webhook refused: %s", provider, e)
    try:  # counted on its own: nothing else of the request is written
        webhooks.count_refused(db.session, provider)
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("could not count a refused %s webhook", provider, exc_info=True)
    return error_response(e.status, str(e))


def _handle(provider: str, configured: object, work):
    if not configured:
        return error_response(404, f"The {provider} webhook is not configured here.")
    try:
        return work()
    except Refused as e:
        return _refused(provider, e)
    except Malformed as e:
        return error_response(400, str(e))
    except Unavailable as e:
        log.warning("%s webhook could not be checked now: %s", provider, e)
        return error_response(503, f"{e}; please retry.")


@bp.post("/ses")
def ses():
    settings = runtime().settings

    def work():
        message = sns.parse_message(request.get_data(cache=True))
        hosts = (settings.sns_cert_hosts, settings.sns_ca_file)
        certs = _sns_certs.get(hosts)
        if certs is None:
            certs = _sns_certs[hosts] = sns.Certificates(*hosts)
        sns.verify(message, certs, settings.ses_topic_arns, utcnow())
        if message["Type"] == "SubscriptionConfirmation":
            certs.get_url(str(message.get("SubscribeURL") or ""))
            log.info("confirmed the SNS subscription to %s", message.get("TopicArn"))
            return jsonify({"confirmed": message.get("TopicArn")})
        if message["Type"] == "UnsubscribeConfirmation":
            return jsonify({"received": 0})
        return _record("ses", sns.ses_reports(message))

    return _handle("ses", settings.ses_topic_arns, work)


@bp.post("/postmark")
def postmark():
    settings = runtime().settings

    def work():
        providers.check_basic_auth(
            request.headers.get("Authorization"), settings.postmark_webhook_auth
        )
        return _record("postmark", providers.postmark_reports(_json()))

    return _handle("postmark", settings.postmark_webhook_auth, work)


@bp.post("/sendgrid")
def sendgrid():
    settings = runtime().settings

    def work():
        text = settings.sendgrid_webhook_key
        key = _sendgrid_keys.get(text)
        if key is None:
            key = _sendgrid_keys[text] = providers.load_sendgrid_key(text)
        providers.verify_sendgrid(
            key,
            request.headers.get(providers.SIGNATURE_HEADER),
            request.headers.get(providers.TIMESTAMP_HEADER),
            request.get_data(cache=True),
            utcnow().timestamp(),
        )
        return _record("sendgrid", providers.sendgrid_reports(_json()))

    return _handle("sendgrid", settings.sendgrid_webhook_key, work)


@bp.post("/mailgun")
def mailgun():
    settings = runtime().settings

    def work():
        payload = _json()
        if not isinstance(payload, dict):
            raise Malformed("expected Mailgun's JSON object")
        token = providers.verify_mailgun(
            settings.mailgun_signing_key, payload.get("signature"), utcnow().timestamp()
        )
        if len(token) > 200:
            raise Refused("the request token is too long")
        return _record("mailgun", providers.mailgun_reports(payload), token=token)

    return _handle("mailgun", settings.mailgun_signing_key, work)
