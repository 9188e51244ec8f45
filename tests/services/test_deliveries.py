"""The delivery engine in-process: frozen audience, claims, outcomes, control and the sweeper.

Batches run here in the test process (the same code a worker runs) against the real SMTP
server, so each step of the exactly-once protocol can be stopped and inspected.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from mailer.clock import utcnow
from mailer.config import parse_smtp_url
from mailer.db import db
from mailer.errors import InvalidTransition, NotFound
from mailer.mail.ratelimit import Unlimited
from mailer.mail.transport import SmtpTransport
from mailer.models import (
    BounceEvent,
    Delivery,
    Frequency,
    Issue,
    IssueVariant,
    Newsletter,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)
from mailer.services import after_commit, deliveries
from mailer.services import subscriptions as subs
from mailer.services.delivery_batches import BatchRunner, Run
from mailer.tasks.delivery import _variants
from tests.helpers.delivery import add_readers, counts, issue_status, make_renderer, new_issue


class Engine:
    """Runs batches like the workers do, collecting what is handed out instead of a broker."""

    def __init__(self, rt, smtp, **settings):
        self.rt = rt
        self.settings = replace(rt.settings, **settings)
        self.transport = SmtpTransport(parse_smtp_url(smtp.url))
        self.queue: list[deliveries.Batch] = []
        self.reports = []

    def runner(self) -> BatchRunner:
        return BatchRunner(
            engine=db.engine,
            transport=self.transport,
            limiter=Unlimited(),
            variant=_variants(self.rt),
            settings=self.settings,
            enqueue=lambda batch, delay: self.queue.append(batch),
        )

    def take(self, session) -> None:
        """The batches the session's commit would hand to the workers: queued here instead."""
        for intent in after_commit.take(session):
            issue_id, ids, token, chain = intent.args
            assert (intent.task, issue_id) == (deliveries.SEND_BATCH, self.issue_id)
            self.queue.append(deliveries.Batch(token, ids, chain))

    def start(self, issue_id: int, render=None) -> deliveries.StartResult:
        self.issue_id, before = issue_id, len(self.queue)
        with db.transaction() as s:
            result = deliveries.start_send(
                s, issue_id, settings=self.settings, render=render or make_renderer()
            )
            self.take(s)
        assert self.queue[before:] == result.batches
        return result

    def resume(self) -> None:
        with db.transaction() as s:
            deliveries.resume(s, self.issue_id, self.settings)
            self.take(s)

    def drain(self, limit: int = 1000) -> None:
        while self.queue and limit:
            batch = self.queue.pop(0)
            runner = self.runner()
            self.reports.append(runner.run(self.issue_id, batch.ids, batch.token, batch.chain))
            limit -= 1

    def sweep(self, later: float = 0.0) -> deliveries.SweepResult:
        with db.transaction() as s:
            result = deliveries.sweep(s, self.settings, now=utcnow() + timedelta(seconds=later))
            self.take(s)
        return result


@pytest.fixture
def make(rt, smtp):
    """make(**settings): an Engine whose SMTP connection is closed after the test."""
    made = []

    def make(**settings):
        made.append(Engine(rt, smtp, **settings))
        return made[-1]

    yield make
    for e in made:
        e.transport.close()


def per_reader(smtp, emails) -> dict[str, int]:
    got = {e: 0 for e in emails}
    for m in smtp.messages:
        if m.recipient in got:
            got[m.recipient] += 1
    return got


def test_start_freezes_the_audience_one_rendering_per_variant(rt, smtp, make):
    everything = add_readers(5)
    news = add_readers(3, sections="news")
    add_readers(2, sections="sport")
    add_readers(2, sections="news,sport")
    add_readers(2, frequency="daily")
    add_readers(2, status=SubscriberStatus.UNSUBSCRIBED)
    calls: list[str] = []
    issue_id = new_issue()
    engine = make()
    result = engine.start(issue_id, make_renderer(empty=("sport",), calls=calls))
    assert (result.deliveries, result.skipped_no_items, result.variants) == (8, 4, 4)
    assert sorted(calls) == ["", "news", "news,sport", "sport"]
    with db.transaction() as s:
        variants = {v.sections: (v.readers, v.empty) for v in s.scalars(select(IssueVariant))}
        frozen = set(
            s.scalars(
                select(Subscriber.email).join(Delivery, Delivery.subscriber_id == Subscriber.id)
            )
        )
    assert variants == {
        "": (5, False),
        "news": (3, False),
        "sport": (2, True),
        "news,sport": (2, True),
    }
    assert frozen == set(everything + news)
    assert issue_status(issue_id) == "sending"

    # An issue for News readers: "all sections" readers get the News variant too.
    calls.clear()
    news_issue = new_issue(audience_sections="news")
    result = engine.start(news_issue, make_renderer(calls=calls))
    assert (result.deliveries, result.skipped_no_items, calls) == (10, 0, ["news"])


def test_a_second_start_is_refused_even_at_the_same_moment(app, rt, smtp, make):
    add_readers(30)
    issue_id = new_issue()
    barrier = threading.Barrier(2)
    outcomes = []

    def click():
        with app.app_context():
            barrier.wait()
            try:
                with db.transaction() as s:
                    started = deliveries.start_send(
                        s, issue_id, settings=rt.settings, render=make_renderer()
                    )
                    after_commit.take(s)  # no worker: only the start is tested
                    outcomes.append(started.deliveries)
            except InvalidTransition as e:
                outcomes.append(str(e))

    threads = [threading.Thread(target=click) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert sorted(outcomes, key=str) == [
        30,
        f"Issue {issue_id} must be draft, scheduled to become sending",
    ]
    assert sum(counts(issue_id).values()) == 30


def test_each_reader_gets_one_copy_even_when_batches_run_twice(rt, smtp, make):
    emails = add_readers(120)
    issue_id = new_issue()
    engine = make(send_batch=25, send_group=10, send_window=2)
    result = engine.start(issue_id)
    first = list(result.batches)
    engine.drain()
    assert issue_status(issue_id) == "finished"
    assert counts(issue_id)["sent"] == 120
    # The broker delivers every task again (a redelivery after a lost ack), and a task turns
    # up with ids it was never given: nothing is sent twice.
    engine.queue = first + [deliveries.Batch("f00d", list(range(1, 500)))]
    engine.drain()
    assert set(per_reader(smtp, emails).values()) == {1}
    assert sum(r.claimed for r in engine.reports[-3:]) == 0


def test_failures_are_classified_retried_and_bounced(rt, smtp, make):
    emails = add_readers(40)
    later, bad, hopeless = emails[3], emails[7], emails[11]
    smtp.once[later] = "451 4.7.1 try again later"
    smtp.rules[bad] = "550 5.1.1 no such user"
    smtp.rules[hopeless] = "452 4.2.2 mailbox full"
    issue_id = new_issue()
    engine = make(retry_base_seconds=60, retry_tries=3)
    engine.start(issue_id)
    engine.drain()
    c = counts(issue_id)
    assert (c["sent"], c["failed_temporary"], c["failed_permanent"]) == (37, 2, 1)
    assert issue_status(issue_id) == "sending"  # retries are owed
    with db.transaction() as s:
        waits = (
            s.execute(select(Delivery.next_attempt_at).where(Delivery.status == "failed_temporary"))
            .scalars()
            .all()
        )
        reader = s.scalar(select(Subscriber).where(Subscriber.email == bad))
        assert reader.status == SubscriberStatus.BOUNCED
        event = s.scalar(
            select(SubscriberEvent).where(
                SubscriberEvent.subscriber_id == reader.id, SubscriberEvent.kind == "bounced"
            )
        )
        assert "550 5.1.1" in event.detail
        # The 5xx answer is in the reader's bounce history like a bounce reported later.
        (bounce,) = s.scalars(select(BounceEvent).where(BounceEvent.subscriber_id == reader.id))
        assert (bounce.kind, bounce.source, bounce.status) == ("hard", "smtp", "5.1.1")
        assert bounce.issue_id == issue_id and "no such user" in bounce.diagnostic
        assert reader.last_bounce_at is not None and reader.bounce_score == 0
    assert all(timedelta(seconds=50) < w - utcnow() <= timedelta(seconds=60) for w in waits)

    assert engine.sweep().retried == 0  # not due yet
    assert engine.sweep(later=61).retried == 2
    engine.drain()
    c = counts(issue_id)
    assert (c["sent"], c["failed_temporary"]) == (38, 1)
    # Backoff grows: the second retry waits four times the first.
    assert engine.sweep(later=200).retried == 0
    assert engine.sweep(later=245).retried == 1
    engine.drain()
    assert issue_status(issue_id) == "finished"
    got = per_reader(smtp, emails)
    assert got[later] == 1 and got[bad] == 0 and got[hopeless] == 0
    assert sum(got.values()) == 38
    with db.transaction() as s:
        gave_up = s.scalar(select(Delivery).join(Subscriber).where(Subscriber.email == hopeless))
        assert gave_up.status == "failed_permanent" and gave_up.attempts == 3
        assert gave_up.last_error.startswith("gave up after 3 tries: 452")
        assert s.scalar(select(Subscriber.status).where(Subscriber.email == hopeless)) == "active"


def test_too_many_failures_pause_the_issue_and_say_why(rt, smtp, make):
    emails = add_readers(60)
    for e in emails:
        smtp.rules[e] = "451 4.7.0 rate limited"
    issue_id = new_issue()
    engine = make(pause_errors=20, send_batch=30, send_group=10)
    engine.start(issue_id)
    engine.drain()
    assert issue_status(issue_id) == "paused"
    with db.transaction() as s:
        reason = s.scalar(select(Issue.status_reason).where(Issue.id == issue_id))
    assert reason.startswith("Paused automatically: ") and "451 4.7.0 rate limited" in reason
    assert counts(issue_id)["pending"] > 0  # the rest waits for an operator


def pausing_after_the_first_group(runner: BatchRunner, engine: Engine, issue_id: int) -> list:
    """The runner's SMTP connection, with an operator pausing the issue once its first group
    went out; the returned list is non-empty from then on."""
    paused: list[bool] = []

    def send_many(messages, _orig=engine.transport.send_many):
        out = _orig(messages)
        if not paused:
            paused.append(True)
            with db.transaction() as s:
                deliveries.pause(s, issue_id)
        return out

    runner.transport = type("T", (), {"send_many": staticmethod(send_many)})()
    return paused


def test_pause_stops_between_groups_resume_sends_the_rest_once(rt, smtp, make):
    emails = add_readers(50)
    issue_id = new_issue()
    engine = make(send_batch=50, send_group=10)
    engine.start(issue_id)
    runner = engine.runner()
    pausing_after_the_first_group(runner, engine, issue_id)
    batch = engine.queue.pop(0)
    report = runner.run(issue_id, batch.ids, batch.token)
    assert report.stopped == "issue paused or cancelled"
    assert counts(issue_id)["sent"] == 10 and counts(issue_id)["pending"] == 40
    with pytest.raises(InvalidTransition), db.transaction() as s:
        deliveries.pause(s, issue_id)
    engine.queue = []
    engine.resume()
    engine.drain()
    assert issue_status(issue_id) == "finished"
    assert set(per_reader(smtp, emails).values()) == {1}


def test_a_pause_and_resume_between_two_groups_leaves_no_row_waiting_for_the_lease(
    rt, smtp, make
):
    emails = add_readers(50)
    issue_id = new_issue()
    engine = make(send_batch=50, send_group=10)
    engine.start(issue_id)
    runner = engine.runner()
    paused = pausing_after_the_first_group(runner, engine, issue_id)
    resumed = []

    def resumed_meanwhile(conn, _orig=runner._issue_status):
        # The operator resumes between the refused group and the runner's look at the issue.
        if paused and not resumed:
            resumed.append(True)
            engine.resume()
        return _orig(conn)

    runner._issue_status = resumed_meanwhile
    batch = engine.queue.pop(0)
    report = runner.run(issue_id, batch.ids, batch.token)
    # The batch still holds its rows, so the resume found none pending: the runner itself
    # sends them, rather than leaving them held until the send lease runs out.
    assert report.sent == 50 and report.stopped is None
    assert counts(issue_id)["sent"] == 50 and issue_status(issue_id) == "finished"
    assert set(per_reader(smtp, emails).values()) == {1}


def test_cancel_stops_for_good(rt, smtp, make):
    add_readers(20)
    issue_id = new_issue()
    engine = make()
    engine.start(issue_id)
    with db.transaction() as s:
        deliveries.cancel(s, issue_id)
    engine.drain()
    assert len(smtp.messages) == 0 and counts(issue_id)["pending"] == 20
    for action in (deliveries.pause, deliveries.cancel):
        with pytest.raises(InvalidTransition), db.transaction() as s:
            action(s, issue_id)
    with pytest.raises(NotFound), db.transaction() as s:
        deliveries.cancel(s, 987654)


def test_sweeper_requeues_untried_claims_and_marks_tried_ones_uncertain(rt, smtp, make):
    emails = add_readers(30)
    issue_id = new_issue()
    engine = make(send_batch=30, send_group=10, send_lease_seconds=60)
    engine.start(issue_id)
    batch = engine.queue.pop(0)
    # A worker takes the batch, begins its first group, then dies without a word.
    dead = engine.runner()
    token = batch.token
    dead.current = Run(issue_id, "q:" + token, f"q:{token}:x", f"t:{token}:x", chain=True)
    with db.engine.begin() as conn:
        claimed, _ = dead._open(conn, batch.ids)
        dead._begin(conn, claimed[:10])
    assert counts(issue_id)["sending"] == 30
    assert engine.sweep(later=30).requeued == 0  # the lease has not run out
    result = engine.sweep(later=61)
    assert (result.requeued, result.uncertain) == (20, 10)
    assert engine.queue == result.batches[issue_id]
    engine.drain()
    c = counts(issue_id)
    assert (c["sent"], c["uncertain"], c["pending"]) == (20, 10, 0)
    assert issue_status(issue_id) == "finished"  # uncertain rows do not hold an issue open
    assert sum(per_reader(smtp, emails).values()) == 20

    with db.transaction() as s:
        listed = deliveries.uncertain_rows(s, issue_id)
        assert len(listed) == 10 and all("may have been delivered" in e for _, _, e in listed)
        n = deliveries.resend_uncertain(s, issue_id, engine.settings)
        engine.take(s)
    assert n == 10 and issue_status(issue_id) == "sending" and engine.queue
    engine.drain()
    assert issue_status(issue_id) == "finished"
    assert set(per_reader(smtp, emails).values()) == {1}


def test_readers_who_leave_before_their_turn_get_nothing(rt, smtp, make):
    emails = add_readers(10)
    issue_id = new_issue()
    engine = make()
    engine.start(issue_id)
    with db.transaction() as s:
        s.execute(
            update(Subscriber)
            .where(Subscriber.email == emails[4])
            .values(status=SubscriberStatus.UNSUBSCRIBED)
        )
    engine.drain()
    assert emails[4] not in per_reader(smtp, [m.recipient for m in smtp.messages])
    with db.transaction() as s:
        st = deliveries.status(s, issue_id)
    assert st["status"] == "finished" and st["withdrawn"] == 1
    assert st["counts"]["sent"] == 9 and st["counts"]["failed_permanent"] == 1


def test_status_counts_rate_and_skipped(rt, smtp, make):
    add_readers(12)
    add_readers(3, sections="sport")
    issue_id = new_issue()
    engine = make(send_batch=4, send_window=1)
    engine.start(issue_id, make_renderer(empty=("sport",)))
    engine.drain(limit=1)
    with db.transaction() as s:
        st = deliveries.status(s, issue_id)
    assert st["status"] == "sending" and st["total"] == 12 and st["skipped_no_items"] == 3
    assert st["counts"]["sent"] == 4 and st["remaining"] == 8
    assert st["rate"] > 0 and st["eta_seconds"] >= 1
    engine.drain()
    with db.transaction() as s:
        st = deliveries.status(s, issue_id)
    assert (st["status"], st["done"], st["rate"], st["eta_seconds"]) == ("finished", 12, 0.0, None)


def test_an_audience_without_readers_finishes_at_once(rt, smtp, make):
    issue_id = new_issue()
    result = make().start(issue_id)
    assert result.deliveries == 0 and issue_status(issue_id) == "finished"


def test_a_dead_workers_claims_are_released_when_its_heartbeat_lapses(rt, smtp, make):
    from mailer.services import workers

    emails = add_readers(40)
    issue_id = new_issue()
    engine = make(send_batch=20, send_group=10, send_window=2)  # the default 600 s lease
    engine.start(issue_id)
    # Two processes each take a batch and begin a group; one keeps beating, one dies.
    for name, batch in zip(["h:1.dead", "h:2.live"], engine.queue, strict=True):
        runner = engine.runner()
        t = batch.token
        runner.current = Run(issue_id, "q:" + t, f"q:{t}:{name}", f"t:{t}:{name}", chain=False)
        with db.engine.begin() as conn:
            claimed, _ = runner._open(conn, batch.ids)
            runner._begin(conn, claimed[:10])
        with db.transaction() as s:
            workers.heartbeat(s, name, utcnow())
    engine.queue = []
    assert engine.sweep(later=29).requeued == 0  # both beat less than 30 s ago
    with db.transaction() as s:
        workers.heartbeat(s, "h:2.live", utcnow() + timedelta(seconds=25))
    result = engine.sweep(later=31)  # long before the lease: the dead one's rows only
    assert (result.requeued, result.uncertain) == (10, 10)
    with db.transaction() as s:
        assert workers.lapsed(s, 30, utcnow() + timedelta(seconds=31)) == []  # forgotten
    engine.drain()
    c = counts(issue_id)
    assert (c["sent"], c["uncertain"], c["sending"]) == (10, 10, 20)  # the live one's: held
    assert sum(per_reader(smtp, emails).values()) == 10


def test_the_housekeeping_turn_goes_to_one_process_per_tick(rt):
    from mailer.services import workers

    now = utcnow()
    with db.transaction() as s:
        assert workers.take_turn(s, "a", 10, now)
    with db.transaction() as s:
        assert not workers.take_turn(s, "b", 10, now + timedelta(seconds=5))
    with db.transaction() as s:
        assert workers.take_turn(s, "b", 10, now + timedelta(seconds=10))


def test_the_tick_runs_the_delivery_sweeper(rt, make):
    import time_machine

    from mailer.tasks.base import tick

    add_readers(12)
    issue_id = new_issue()
    engine = make(send_batch=5, send_window=2)
    engine.start(issue_id)  # handed out to two tasks that never run (a lost broker)
    assert counts(issue_id)["sending"] == 10
    first = tick()
    assert first["sweep_deliveries"] == {}, first  # within the lease: nothing to do
    later = utcnow() + timedelta(seconds=rt.settings.send_lease_seconds + 1)
    with time_machine.travel(later, tick=False):
        swept = tick()["sweep_deliveries"]
    # The lost rows and the two never handed out go to one new batch (the tick's settings
    # allow 500 rows a batch).
    assert swept == {"requeued": 10, "batches": 1}
    assert counts(issue_id)["sending"] == 12 and counts(issue_id)["pending"] == 0


def test_an_unreachable_server_hands_the_batch_to_a_later_retry(rt, smtp, make):
    from mailer.config import SmtpSettings
    from mailer.mail.smtp import SmtpClient
    from tests.helpers.servers import free_port

    emails = add_readers(30)
    issue_id = new_issue()
    engine = make(send_batch=30, send_group=10, send_lease_seconds=60)
    engine.start(issue_id)
    down = SmtpTransport(SmtpSettings("127.0.0.1", free_port(), timeout=1))
    down.client = SmtpClient(down.cfg, reconnect_delays=(0.05,))
    runner = engine.runner()
    runner.transport = down
    batch = engine.queue.pop(0)
    report = runner.run(issue_id, batch.ids, batch.token)
    assert report.stopped == "server unreachable" and report.sent == 0
    (retry,) = engine.queue  # one retry batch, which will not extend the chain
    assert sorted(retry.ids) == sorted(batch.ids) and retry.chain is False
    c = counts(issue_id)
    assert c["sending"] == 30 and c["failed_temporary"] == 0  # no try was counted
    with db.transaction() as s:
        attempts = set(s.scalars(select(Delivery.attempts)))
        errors = set(s.scalars(select(Delivery.last_error).where(Delivery.last_error.is_not(None))))
    assert attempts == {0} and all(e.startswith("unreachable: cannot reach") for e in errors)

    # Still down a whole lease later: the issue pauses and says why.
    assert engine.sweep(later=30).paused == 0
    engine.queue.clear()
    with db.transaction() as s:
        s.execute(update(Delivery).values(claimed_at=utcnow() - timedelta(seconds=61)))
        s.execute(update(Issue).values(started_at=utcnow() - timedelta(seconds=120)))
    result = engine.sweep()
    assert result.requeued == 30 and result.paused == 1
    with db.transaction() as s:
        issue = s.get(Issue, issue_id)
        assert issue.status == "paused" and "cannot reach SMTP server" in issue.status_reason

    # The server is back: resume sends everyone once.
    engine.queue = []
    engine.resume()
    engine.drain()
    assert issue_status(issue_id) == "finished"
    assert set(per_reader(smtp, emails).values()) == {1}


def _newsletter(slug: str) -> int:
    with db.transaction() as s:
        n = Newsletter(slug=slug, name=slug.title())
        s.add(n)
        s.flush()
        return n.id


def test_an_issue_goes_to_the_active_subscribers_of_its_own_newsletter(rt, smtp, make):
    first = add_readers(3)  # the first newsletter's readers
    sport = _newsletter("sport")
    emails = add_readers(4, prefix="both")
    with db.transaction() as s:
        ids = list(s.scalars(select(Subscriber.id).where(Subscriber.email.in_(emails))))
        # Two read both, one left the first newsletter (and reads sport, weekly), one reads
        # sport daily only.
        s.add_all(Subscription(subscriber_id=i, newsletter_id=sport,
                               status=SubscriptionStatus.ACTIVE) for i in ids[:3])
        s.add(Subscription(subscriber_id=ids[3], newsletter_id=sport,
                           status=SubscriptionStatus.ACTIVE, frequency=Frequency.DAILY))
        s.execute(update(Subscription).where(
            Subscription.subscriber_id.in_(ids[2:]), Subscription.newsletter_id != sport,
        ).values(status=SubscriptionStatus.UNSUBSCRIBED))
    sport_issue = new_issue(newsletter_id=sport)
    engine = make()
    assert engine.start(sport_issue).deliveries == 3
    engine.drain()
    assert sorted(m.recipient for m in smtp.messages) == sorted(emails[:3])
    # An issue that names no newsletter (made before issues named one) is the first one's.
    engine2 = make()
    assert engine2.start(new_issue()).deliveries == 5
    with db.transaction() as s:
        got = set(s.scalars(
            select(Subscriber.email).join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.issue_id == engine2.issue_id)
        ))
    assert got == set(first) | set(emails[:2])


def test_a_reader_who_leaves_the_newsletter_before_their_turn_gets_nothing(rt, smtp, make):
    emails = add_readers(6)
    issue_id = new_issue()
    engine = make()
    engine.start(issue_id)
    with db.transaction() as s:
        gone = s.scalar(select(Subscriber).where(Subscriber.email == emails[2]))
        sport = Newsletter(slug="sport", name="Sport")
        s.add(sport)
        s.flush()
        s.add(Subscription(subscriber_id=gone.id, newsletter_id=sport.id,
                           status=SubscriptionStatus.ACTIVE))
        s.flush()
        # Leaves this issue's newsletter, stays a reader of another one.
        subs.unsubscribe(s, gone.uid, "test")
        assert s.get(Subscriber, gone.id).status == SubscriberStatus.ACTIVE
    engine.drain()
    assert emails[2] not in [m.recipient for m in smtp.messages]
    with db.transaction() as s:
        st = deliveries.status(s, issue_id)
        reason = s.scalar(select(Delivery.last_error).where(Delivery.subscriber_id == gone.id))
    assert st["status"] == "finished" and st["withdrawn"] == 1 and st["counts"]["sent"] == 5
    assert reason == "not sent: the reader left this newsletter"


def test_the_message_links_name_the_issues_newsletter(rt, smtp, make):
    sport = _newsletter("sport")
    emails = add_readers(1)
    with db.transaction() as s:
        reader = s.scalar(select(Subscriber).where(Subscriber.email == emails[0]))
        s.add(Subscription(subscriber_id=reader.id, newsletter_id=sport,
                           status=SubscriptionStatus.ACTIVE))
        uid = reader.uid
    engine = make()
    engine.start(new_issue(newsletter_id=sport))
    engine.drain()
    (message,) = smtp.messages
    header = message.message["List-Unsubscribe"]
    assert rt.links.unsubscribe(uid, sport) in header
    assert rt.links.unsubscribe(uid) not in header
