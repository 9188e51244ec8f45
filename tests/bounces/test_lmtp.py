"""The LMTP protocol server of the bounce receiver, with a recording callable of the test's
own (the database side is tested through `mailer bounces lmtp` in tests/cli/)."""

from __future__ import annotations

import smtplib
import threading

import pytest

from mailer.bounces.lmtp import LmtpServer, TryLater, reply
from tests.helpers.servers import wait_until

LIMIT = 50_000


class Recorder:
    """What the server handed over, and what to answer: a line, TryLater or a crash."""

    def __init__(self):
        self.calls: list[tuple[bytes | None, str]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, raw: bytes | None, recipient: str) -> list[str]:
        self.release.wait(10)
        self.calls.append((raw, recipient))
        if recipient.startswith("busy"):
            raise TryLater("not recorded, try again later: the database is unreachable")
        if recipient.startswith("crash"):
            raise RuntimeError("secret details\nTraceback (most recent call last)")
        if raw is None:
            return [f"ignored: larger than {LIMIT} bytes"]
        return [f"recorded: for {recipient}", "ignored: about nobody we mailed recently"]


@pytest.fixture
def served():
    recorder = Recorder()
    ready = threading.Event()
    where = []
    server = LmtpServer(recorder, listen=("127.0.0.1", 0), threads=2, max_bytes=LIMIT,
                        hostname="bounces.test", signals=False,
                        ready=lambda shown: (where.append(shown), ready.set()))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    port = int(where[0].rsplit(":", 1)[1])
    yield server, recorder, port
    server.stop()
    thread.join(10)
    assert not thread.is_alive()


def connect(port: int) -> smtplib.LMTP:
    client = smtplib.LMTP("127.0.0.1", port, timeout=10)
    client.ehlo("mx.test")  # smtplib's LMTP says LHLO
    return client


def test_each_recipient_gets_its_own_reply_after_data(served):
    server, recorder, port = served
    client = connect(port)
    assert "size" not in client.esmtp_features  # never a 5xx at MAIL FROM for a bounce
    client.mail("<>")
    for rcpt in ("bounces+a@b.test", "busy@b.test", "crash@b.test"):
        assert client.rcpt(rcpt)[0] == 250
    assert client.data(b"Subject: a report\r\n\r\nbody\r\n") == (
        250, b"2.0.0 recorded: for bounces+a@b.test\n"
             b"2.0.0 ignored: about nobody we mailed recently")
    assert client.getreply() == (
        451, b"4.3.0 not recorded, try again later: the database is unreachable")
    code, text = client.getreply()
    assert (code, text) == (451, b"4.3.0 not recorded, try again later: RuntimeError")
    assert [r for _, r in recorder.calls] == ["bounces+a@b.test", "busy@b.test", "crash@b.test"]
    assert recorder.calls[0][0] == b"Subject: a report\r\n\r\nbody\r\n"
    # The session goes on after a failure: the next message is taken.
    assert client.sendmail("", ["bounces+c@b.test"], b"Subject: next\r\n\r\nx\r\n") == {}
    client.quit()


def test_a_message_over_the_limit_is_not_kept_and_each_recipient_told(served):
    server, recorder, port = served
    client = connect(port)
    client.mail("<>", [f"SIZE={LIMIT * 4}"])  # announced too big: still taken at MAIL
    client.rcpt("bounces+a@b.test")
    client.rcpt("bounces+b@b.test")
    big = b"Subject: big\r\n\r\n" + b"x" * 900 + b"\r\n" * 200 + (b"y" * 990 + b"\r\n") * 60
    assert client.data(big) == (250, f"2.0.0 ignored: larger than {LIMIT} bytes".encode())
    assert client.getreply()[0] == 250
    client.mail("<>")
    client.rcpt("bounces+c@b.test")
    one_line = b"Subject: long\r\n\r\n" + b"z" * (LIMIT * 2) + b"\r\n"
    assert client.data(one_line)[0] == 250
    assert [raw for raw, _ in recorder.calls] == [None, None, None]
    client.quit()


def test_helo_and_ehlo_are_not_lmtp(served):
    _, _, port = served
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    assert client.helo("mx.test")[0] == 500
    assert client.ehlo("mx.test")[0] == 500
    client.close()


def test_stop_finishes_the_message_in_hand(served):
    server, recorder, port = served
    recorder.release.clear()  # the recording is slow: the message is in hand at stop()
    client = connect(port)
    client.mail("<>")
    client.rcpt("bounces+a@b.test")
    idle = connect(port)  # another connection, between messages
    result = {}
    sender = threading.Thread(target=lambda: result.update(
        answer=client.data(b"Subject: in hand\r\n\r\nx\r\n")))
    sender.start()
    wait_until(lambda: server.in_hand == 1, what="the message in hand")
    server.stop()
    wait_until(lambda: server.stopping, what="the server stopping")
    code, words = idle.mail("<>")  # no new message once stopping: 421, and closed
    assert (code, words) == (421, b"4.3.2 the bounce receiver is stopping, try again later")
    recorder.release.set()
    sender.join(10)
    assert result["answer"] == (250, b"2.0.0 recorded: for bounces+a@b.test\n"
                                     b"2.0.0 ignored: about nobody we mailed recently")
    client.close()
    wait_until(lambda: not server.connections, what="the connections closed")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        idle.noop()  # the server closed it; this closes the client's side too


def test_replies_keep_to_one_line_each():
    assert reply(250, "2.0.0", ["a\r\nb", "x" * 1000]) == (
        "250-2.0.0 a b\r\n250 2.0.0 " + "x" * 400)
    assert reply(451, "4.3.0", []) == "451 4.3.0 done"
