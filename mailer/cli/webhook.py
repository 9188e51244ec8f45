"""Outgoing webhooks: `mailer webhook add | list | remove | test | deliveries`."""

from __future__ import annotations

import json

import click

from mailer.cli import Context, cli, fail, pass_ctx
from mailer.db import db
from mailer.errors import MailerError
from mailer.services import hook_endpoints, hooks


@cli.group()
def webhook():
    """Endpoints that get signed events: signups, confirmations, bounces, sends, schedules."""


@webhook.command("add")
@click.argument("url")
@click.option("--events", required=True,
              help=f"Comma-separated event types, or '*' for all: {', '.join(hooks.EVENT_TYPES)}.")
@click.option("--personal-data", is_flag=True,
              help="Include readers' addresses and names (off: their ids only).")
@click.option("--description", help="What the endpoint is, for the console.")
@pass_ctx
def add(ctx: Context, url, events, personal_data, description):
    """Add an endpoint; prints its secret (shown this once) and, on the last line, its id."""
    settings = ctx.settings
    with ctx.app.app_context():
        try:
            with db.transaction() as s:
                endpoint = hook_endpoints.create(
                    s, url=url, events=events, personal_data=personal_data,
                    description=description, allow_http=settings.webhook_allow_http,
                    allow_private=settings.webhook_allow_private,
                )
                endpoint_id, secret, types = endpoint.id, endpoint.secret, endpoint.event_types
        except MailerError as e:
            fail(str(e))
    click.echo(f"Added {url} for {', '.join(types)}.")
    click.echo(f"Secret (shown once; verify each delivery with it): {secret}")
    click.echo(endpoint_id)


@webhook.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def list_(ctx: Context, as_json):
    """Every endpoint, its events and whether it is enabled or failing."""
    with ctx.app.app_context(), db.transaction() as s:
        items = [hook_endpoints.endpoint_dict(e) for e in hook_endpoints.all_endpoints(s)]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("No webhook endpoints.")
    for item in items:
        state = "enabled" if item["enabled"] else f"disabled ({item['disabled_reason']})"
        if item["enabled"] and item["failing_since"]:
            state = f"failing since {item['failing_since']}"
        click.echo(f"{item['id']:>4}  {item['url']}  [{state}]")
        click.echo(f"      {', '.join(item['events'])}"
                   f"{'  (personal data)' if item['personal_data'] else ''}")


def _endpoint_id(ref: str) -> int:
    if not ref.isdigit():
        fail(f"{ref!r} is not an endpoint id (see `mailer webhook list`).")
    return int(ref)


@webhook.command("remove")
@click.argument("endpoint")
@pass_ctx
def remove(ctx: Context, endpoint):
    """Delete an endpoint and its deliveries."""
    with ctx.app.app_context():
        try:
            with db.transaction() as s:
                hook_endpoints.remove(s, _endpoint_id(endpoint))
        except MailerError as e:
            fail(str(e))
    click.echo(f"Removed webhook endpoint {endpoint}.")


@webhook.command("test")
@click.argument("endpoint")
@pass_ctx
def test(ctx: Context, endpoint):
    """Send a `webhook.test` event to the endpoint; prints the delivery's id."""
    with ctx.app.app_context():
        try:
            with db.transaction() as s:
                delivery_id = hook_endpoints.send_test(s, _endpoint_id(endpoint))
        except MailerError as e:
            fail(str(e))
    click.echo("Test event queued; see `mailer webhook deliveries " + endpoint + "`.")
    click.echo(delivery_id)


@webhook.command("deliveries")
@click.argument("endpoint")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def deliveries(ctx: Context, endpoint, as_json):
    """The endpoint's last 100 deliveries, newest first."""
    with ctx.app.app_context():
        try:
            with db.transaction() as s:
                items = [hook_endpoints.delivery_dict(d, e)
                         for d, e in hook_endpoints.recent_deliveries(s, _endpoint_id(endpoint))]
        except MailerError as e:
            fail(str(e))
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("No deliveries yet.")
    for d in items:
        answer = d["response_status"] or d["error"] or "-"
        latency = f"{d['latency_ms']} ms" if d["latency_ms"] is not None else "-"
        click.echo(f"{d['id']:>6}  {d['event']['type']:<24} {d['status']:<9} "
                   f"attempts {d['attempts']}  {answer}  {latency}  {d['event']['id']}")
