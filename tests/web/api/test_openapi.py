"""The API's OpenAPI document: it lists exactly the routes Flask serves, it is valid OpenAPI
3.1, and the API answers generated requests (schemathesis) with the documented codes and
shapes, never a 5xx."""

from __future__ import annotations

import re
from datetime import timedelta

import hypothesis
import pytest
import schemathesis
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Frequency, Role, Schedule, Subscriber, SubscriberStatus
from mailer.services import digests, hook_endpoints, newsletters, users
from mailer.web.api import openapi
from tests.helpers.digests import add_article

DOCUMENT = "/api/v1/openapi.json"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Generated requests per operation and kind of input (valid with the seeded ids, valid,
# invalid): about 1,900 requests, half a minute for both passes' runs on a shared 2-core
# machine.
EXAMPLES = 25


def flask_api_routes(app) -> dict[str, set[str]]:
    """Path template -> methods of every Flask rule under /api/v1, in OpenAPI spelling."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule == DOCUMENT:
            continue
        methods = {m.lower() for m in rule.methods} - {"options"}
        if "get" in methods:
            methods.discard("head")  # Flask adds HEAD to every GET; /pageviews declares its own
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(methods)
    return routes


def test_the_document_lists_exactly_the_routes_flask_serves(app, client):
    resp = client.get(DOCUMENT)  # no token: clients and generators fetch it first
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    doc = resp.json
    documented = {path: set(item) & METHODS for path, item in doc["paths"].items()}
    assert documented == flask_api_routes(app)
    assert doc["servers"] == [{"url": app.extensions["mailer.settings"].base_url}]
    # Only the site's signup form and page-view beacon are public; the rest needs a token.
    public = {(path, method) for path, item in doc["paths"].items()
              for method, op in item.items() if method in METHODS and op.get("security") == []}
    assert public == {("/api/v1/subscribe", "post"), ("/api/v1/pageviews", "post"),
                      ("/api/v1/pageviews", "head")}
    assert doc["security"] == [{"bearerAuth": []}]
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


def test_only_the_operations_documented_as_public_answer_without_a_token(client):
    doc = client.get(DOCUMENT).json
    for path, item in doc["paths"].items():
        url = re.sub(r"\{\w+\}", "1", path)
        for method in set(item) & METHODS:
            resp = client.open(url, method=method.upper())
            if item[method].get("security") == []:
                assert resp.status_code != 401, (method, path)
            else:
                assert resp.status_code == 401 and resp.json["error"], (method, path)


def test_the_document_is_valid_openapi_3_1(client):
    doc = client.get(DOCUMENT).json
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)  # raises with the path of the first problem


def _seed(app) -> tuple[str, dict]:
    """What generated requests can find (articles, a draft issue with items, a reader, a
    schedule, a webhook endpoint, a newsletter) and an admin's token as `mailer user token`
    makes it; the token and the ids."""
    from mailer.runtime import runtime

    now = utcnow()
    with app.app_context():
        for n in range(3):
            add_article(db.session, f"Story {n}", now - timedelta(hours=n + 1))
        db.session.add(Subscriber(email="reader@daily.example", status=SubscriberStatus.ACTIVE,
                                  frequency=Frequency.WEEKLY, confirmed_at=now))
        schedule = Schedule(name="Weekly", cron="0 7 * * 1", timezone="Europe/Berlin",
                            audience_frequency=Frequency.WEEKLY, audience_sections="",
                            subject="", latest_n=5, popular_m=2, min_items=1, active=True)
        db.session.add(schedule)
        issue = digests.create_issue(db.session, runtime().settings, runtime().popularity, now=now, popular_m=0)
        admin = users.create_user(db.session, "admin@daily.example", "a long enough password",
                                  Role.ADMIN)
        token = users.create_api_token(db.session, admin, "openapi tests")
        endpoint = hook_endpoints.create(db.session, url="http://127.0.0.1:9/hooks", events="*",
                                         allow_http=True, allow_private=True)
        delivery_id = hook_endpoints.send_test(db.session, endpoint.id)
        newsletter = newsletters.create(db.session, {"slug": "morning", "name": "Morning"})
        db.session.commit()
        ids = {"issue_id": issue.id, "item_id": issue.items[0].id, "schedule_id": schedule.id,
               "webhook_id": endpoint.id, "delivery_id": delivery_id, "slug": newsletter.slug}
    return token, ids


# What every answer is checked for: no 5xx, a documented status code, media type, body shape
# and headers; and no secured operation that answers without the token.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "ignored_auth")
OPERATIONS = [(method, path) for path, item in openapi.document()["paths"].items()
              for method in item if method in METHODS]


def _strategies(operation, method: str, path: str, ids: dict) -> list:
    """Valid inputs, first with the seeded ids in the path (so bodies and queries reach the
    code behind the 404s), then with any ids; invalid inputs where there is an input."""
    positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
    item = openapi.document()["paths"][path]
    known = {name: value for name, value in ids.items() if f"{{{name}}}" in path}
    out = [operation.as_strategy(generation_mode=positive, path_parameters=known)] if known else []
    out.append(operation.as_strategy(generation_mode=positive))
    if "parameters" in item or {"parameters", "requestBody"} & set(item[method]):
        out.append(operation.as_strategy(generation_mode=negative))
    return out


@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_generated_requests_get_documented_answers_and_never_a_5xx(app, method, path):
    token, ids = _seed(app)
    config = schemathesis.Config.from_dict({
        "auth": {"openapi": {"bearerAuth": {"bearer": token}}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })
    operation = schemathesis.openapi.from_wsgi(DOCUMENT, app, config=config)[path][method.upper()]
    headers = {"Authorization": f"Bearer {token}"}
    for strategy in _strategies(operation, method, path, ids):
        # derandomize: the same inputs on every run, so a failure in CI replays anywhere.
        @hypothesis.settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
                             database=None, suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=strategy)
        def answers_as_documented(case):
            case.call_and_validate(headers=headers)

        answers_as_documented()
