"""The automatic pause on real parts: the worker sends an issue to a few thousand readers,
complaints come in over the limit while it sends, and the issue stops itself."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from mailer.bounces import Kind, Report, Source
from mailer.db import db
from mailer.models import Delivery, DeliveryStatus, Issue
from mailer.services import bounces, deliveries
from tests.helpers.app import make_app
from tests.helpers.delivery import add_readers, counts, make_renderer, new_issue, own_broker
from tests.helpers.servers import WorkerProcess, wait_until

READERS = 2500


@pytest.mark.slow
def test_a_sending_issue_pauses_itself_when_complaints_pass_the_limit(app, env, smtp, tmp_path):
    # Slow enough that the complaints arrive while it sends.
    env = {**own_broker(env, tmp_path), "MAILER_RATE_LIMIT": "150"}
    sender = make_app(env)
    rt = sender.extensions["mailer"]
    add_readers(READERS, names=False)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        with sender.app_context():
            issue_id = new_issue()
            with db.transaction() as s:
                deliveries.start_send(s, issue_id, settings=rt.settings,
                                      render=make_renderer(size=2000))
            wait_until(lambda: counts(issue_id)["sent"] >= 1100, 120, 0.2,
                       what=f"1,100 messages sent ({worker.log()[-500:]})")
            with db.transaction() as s:
                first = list(s.scalars(select(Delivery.id).where(
                    Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENT)
                    .order_by(Delivery.id).limit(5)))
            for k, did in enumerate(first):  # 5 complaints: over 0.3 % of what was sent
                with db.transaction() as s:
                    bounces.record(s, rt.settings, Report(
                        source=Source.PIPE, kind=Kind.COMPLAINT, key=f"fbl-{k}",
                        delivery_id=did))
            with db.transaction() as s:
                issue = s.get(Issue, issue_id)
                assert issue.status == "paused", counts(issue_id)
                # Paused at the complaint that passed 0.3 % of the messages sent by then.
                m = re.fullmatch(r"Paused automatically: (\d) complaints in (\d+) messages "
                                 r"\((\d\.\d\d)%, over 0\.3 %\)\.", issue.status_reason)
                assert m and int(m[1]) / int(m[2]) > 0.003 >= (int(m[1]) - 1) / int(m[2])
            time.sleep(3)  # the groups already on the wire finish; nothing new starts
            stopped = counts(issue_id)
            time.sleep(3)
            assert counts(issue_id) == stopped
            assert stopped["sent"] < READERS and stopped["pending"] > 0
            delivered = {m.recipient for m in smtp.messages}
            assert len(delivered) == stopped["sent"]
    finally:
        worker.stop()
