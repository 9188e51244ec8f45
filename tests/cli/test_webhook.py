"""`mailer webhook`: add (the secret once), list, test, deliveries, remove; bad input exits 1
with one line, never a traceback."""

from __future__ import annotations

import json

from mailer.db import db
from mailer.models import HookEndpoint
from mailer.services import after_commit
from mailer.tasks.base import hand_over


def test_add_list_test_deliveries_remove(runner):
    added = runner.invoke(["webhook", "add", "http://127.0.0.1:9/hooks",
                           "--events", "subscriber.confirmed,issue.finished", "--personal-data"])
    assert added.exit_code == 0, added.output
    endpoint_id = int(added.stdout.splitlines()[-1])
    secret = added.stdout.split("Secret (shown once; verify each delivery with it): ")[1].split()[0]
    assert secret.startswith("whsec_")
    endpoint = db.session.get(HookEndpoint, endpoint_id)
    assert endpoint.secret == secret and endpoint.personal_data
    assert endpoint.event_types == ["issue.finished", "subscriber.confirmed"]

    listed = json.loads(runner.invoke(["webhook", "list", "--json"]).stdout)
    assert [(e["id"], e["enabled"]) for e in listed] == [(endpoint_id, True)]
    assert "secret" not in listed[0]  # shown once, when added
    assert "127.0.0.1:9/hooks  [enabled]" in runner.invoke(["webhook", "list"]).stdout

    handed = []
    after_commit.install(lambda intent: handed.append(intent) or True)
    try:
        tested = runner.invoke(["webhook", "test", str(endpoint_id)])
    finally:
        after_commit.install(hand_over)
    assert tested.exit_code == 0, tested.output
    delivery_id = int(tested.stdout.splitlines()[-1])
    assert [i.args for i in handed] == [(delivery_id,)]
    (row,) = json.loads(runner.invoke(["webhook", "deliveries", str(endpoint_id), "--json"]).stdout)
    assert (row["id"], row["event"]["type"], row["status"]) == (delivery_id, "webhook.test",
                                                               "pending")
    assert "webhook.test" in runner.invoke(["webhook", "deliveries", str(endpoint_id)]).stdout

    assert runner.invoke(["webhook", "remove", str(endpoint_id)]).exit_code == 0
    assert runner.invoke(["webhook", "list"]).stdout.strip() == "No webhook endpoints."


def test_bad_input_exits_1_with_a_reason(runner):
    cases = [
        (["webhook", "add", "https://93.184.216.34/x", "--events", "nope"], "Unknown event type"),
        (["webhook", "add", "ftp://example.com/x", "--events", "*"], "https://"),
        (["webhook", "remove", "12345"], "no webhook endpoint 12345"),
        (["webhook", "test", "abc"], "not an endpoint id"),
        (["webhook", "deliveries", "999"], "no webhook endpoint 999"),
    ]
    for args, words in cases:
        result = runner.invoke(args)
        assert result.exit_code == 1, (args, result.output)
        assert words in result.stderr and "Traceback" not in result.output
    assert runner.invoke(["webhook", "add", "https://93.184.216.34/x"]).exit_code == 2
    assert db.session.query(HookEndpoint).count() == 0
