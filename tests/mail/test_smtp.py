"""The pipelining SMTP client against real SMTP servers (aiosmtpd on local ports)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
import ssl
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailer.config import SmtpSettings, load_settings
from mailer.links import Links
from mailer.mail import smtp
from mailer.mail.composer import Composer
from mailer.mail.errors import PermanentFailure, TemporaryFailure
from mailer.mail.notices import Notices, Outgoing
from mailer.mail.smtp import NotAttempted, SmtpClient, Uncertain
from mailer.mail.transport import SmtpTransport
from mailer.tokens import Tokens
from tests.helpers.servers import free_port


class Handler:
    """Answers RCPT from `rules`, records messages; optionally offers PIPELINING."""

    def __init__(
        self, pipelining: bool = False, data_answer: str = "250 OK", data_delay: float = 0
    ):
        self.pipelining = pipelining
        self.data_answer = data_answer
        self.data_delay = data_delay
        self.rules: dict[str, str] = {}
        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        for key, answer in self.rules.items():
            if key in address:
                return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received += [(r, bytes(envelope.content)) for r in envelope.rcpt_tos]
        if self.data_delay:  # stored, then slow to say so (a busy disk, a slow filter)
            await asyncio.sleep(self.data_delay)
        return self.data_answer


@pytest.fixture
def serve():
    started = []

    def start(handler, **kwargs) -> int:
        port = free_port()
        controller = Controller(
            handler, hostname="127.0.0.1", port=port, ready_timeout=10, **kwargs
        )
        controller.start()
        started.append(controller)
        return port

    yield start
    for c in started:
        c.stop()


@pytest.fixture
def clients():
    made = []

    def make(cfg, **kwargs) -> SmtpClient:
        made.append(SmtpClient(cfg, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


def messages(*recipients: str) -> list[Outgoing]:
    return [
        Outgoing("news@daily.example", r, f"Subject: to {r}\r\n\r\nHello {r}\r\n".encode())
        for r in recipients
    ]


@pytest.mark.parametrize("pipelining", [True, False])
def test_each_recipient_gets_its_own_outcome(serve, clients, pipelining):
    handler = Handler(pipelining=pipelining)
    handler.rules = {"later": "451 4.7.1 try again later", "nobody": "550 5.1.1 no such user"}
    port = serve(handler)
    client = clients(SmtpSettings("127.0.0.1", port))
    outcome = client.send_many(
        messages("a@x.example", "later@x.example", "b@x.example", "nobody@x.example", "c@x.example")
    )
    assert ("PIPELINING" in client.extensions) is pipelining
    assert [type(o).__name__ if o else None for o in outcome] == [
        None,
        "TemporaryFailure",
        None,
        "PermanentFailure",
        None,
    ]
    assert "451 4.7.1 try again later" in str(outcome[1]) and outcome[3].code == 550
    assert [r for r, _ in handler.received] == ["a@x.example", "b@x.example", "c@x.example"]
    # The same connection goes on working after the refusals.
    assert client.send_many(messages("d@x.example")) == [None]


def test_a_dropped_connection_is_reopened(serve, clients):
    handler = Handler(pipelining=True)
    port = serve(handler)
    client = clients(SmtpSettings("127.0.0.1", port), reconnect_delays=(0.05,))
    assert client.send_many(messages("a@x.example")) == [None]
    client.sock.close()  # as if the server had closed an idle connection
    client._rfile.close()
    assert client.send_many(messages("b@x.example", "c@x.example")) == [None, None]
    assert len(handler.received) == 3


def test_nothing_is_attempted_when_the_server_is_down(clients):
    client = clients(
        SmtpSettings("127.0.0.1", free_port(), timeout=2), reconnect_delays=(0.05, 0.05)
    )
    started = time.monotonic()
    outcome = client.send_many(messages("a@x.example", "b@x.example"))
    assert all(isinstance(o, NotAttempted) for o in outcome)
    assert "cannot reach SMTP server" in str(outcome[0]) and time.monotonic() - started < 5


def test_no_answer_after_the_data_is_uncertain(serve, clients):
    # The server accepts the message, but answers after the client gave up waiting: the
    # client cannot know, so it must not claim either outcome.
    handler = Handler(pipelining=True, data_delay=1.5)
    port = serve(handler)
    client = clients(SmtpSettings("127.0.0.1", port, timeout=0.5), reconnect_delays=(0.05,))
    outcome = client.send_many(messages("slow@x.example"))
    assert isinstance(outcome[0], Uncertain) and isinstance(outcome[0], TemporaryFailure)
    assert [r for r, _ in handler.received] == ["slow@x.example"]  # it did arrive


def test_a_421_after_the_data_is_a_temporary_refusal(serve, clients):
    port = serve(Handler(data_answer="421 4.3.2 shutting down"))
    outcome = clients(SmtpSettings("127.0.0.1", port)).send_many(messages("a@x.example"))
    assert type(outcome[0]) is TemporaryFailure and outcome[0].code == 421


def make_certificate(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"mailer"
        and auth_data.password == b"s3cret pass"
    )
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535


@pytest.mark.parametrize("method", ["PLAIN", "LOGIN"])
def test_starttls_and_login(serve, clients, tmp_path, method):
    server_tls, client_tls = make_certificate(tmp_path)
    handler = Handler(pipelining=True)
    port = serve(
        handler,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
        auth_exclude_mechanism=["LOGIN"] if method == "PLAIN" else ["PLAIN"],
    )
    cfg = SmtpSettings("127.0.0.1", port, "mailer", "s3cret pass", tls="starttls")
    client = clients(cfg, ssl_context=client_tls)
    assert client.send_many(messages("a@x.example")) == [None]
    assert isinstance(client.sock, ssl.SSLSocket) and handler.received

    wrong = clients(
        SmtpSettings("127.0.0.1", port, "mailer", "wrong", tls="starttls"),
        ssl_context=client_tls,
        reconnect_delays=(),
    )
    (outcome,) = wrong.send_many(messages("b@x.example"))
    assert isinstance(outcome, NotAttempted) and "login refused: 535" in str(outcome)


def test_implicit_tls(serve, clients, tmp_path):
    server_tls, client_tls = make_certificate(tmp_path)
    handler = Handler()
    port = serve(handler, ssl_context=server_tls)
    client = clients(SmtpSettings("127.0.0.1", port, tls="ssl"), ssl_context=client_tls)
    assert client.send_many(messages("a@x.example", "b@x.example")) == [None, None]
    untrusted = clients(SmtpSettings("127.0.0.1", port, tls="ssl"), reconnect_delays=())
    assert isinstance(untrusted.send_many(messages("c@x.example"))[0], NotAttempted)
    assert len(handler.received) == 2


def test_single_messages_are_dot_stuffed_and_refusals_raised(serve):
    handler = Handler()
    handler.rules = {"nobody": "550 5.1.1 no such user", "later": "452 4.2.2 mailbox full"}
    transport = SmtpTransport(SmtpSettings("127.0.0.1", serve(handler)))
    try:
        transport.send("news@daily.example", "a@x.example", b"Subject: x\n\n.dot line\n..two\nend")
        assert handler.received[0][1] == b"Subject: x\r\n\r\n.dot line\r\n..two\r\nend\r\n"
        with pytest.raises(PermanentFailure, match="550 5.1.1"):
            transport.send("news@daily.example", "nobody@x.example", b"Subject: x\r\n\r\nx\r\n")
        with pytest.raises(TemporaryFailure, match="452 4.2.2"):
            transport.send("news@daily.example", "later@x.example", b"Subject: x\r\n\r\nx\r\n")
    finally:
        transport.close()


def _to_wire_by_the_patterns(data: bytes) -> bytes:
    data = smtp._BARE_LF.sub(b"\r\n", data)
    data = smtp._DOT_LINE.sub(b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def test_a_message_in_wire_form_is_sent_as_it_is_without_the_patterns(tmp_path, monkeypatch):
    rng = random.Random(5321)
    pieces = [b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"Subject: x", b" ", b"=2E"]
    samples = [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
               for _ in range(3000)]
    samples += [b"", b".", b"\r\n", b"a\r\n.b\r\n", b"a\r\n", b"a\r\n\r", b"\ra\r\n"]
    for data in samples:  # the short cut changes nothing
        assert smtp.to_wire(data) == _to_wire_by_the_patterns(data), data

    class Untouched:
        def sub(self, *args):
            raise AssertionError("a message in wire form went through the patterns")

    # What the composer builds is in wire form already (mail.encoding).
    settings = load_settings({"MAILER_INSTANCE_PATH": str(tmp_path)})
    tokens = Tokens(settings.secret_key)
    notices = Notices(Composer(settings, Links(settings, tokens), tokens))
    built = notices.confirmation("a@example.com", "uid1", dt.datetime.now(dt.UTC)).data
    monkeypatch.setattr(smtp, "_BARE_LF", Untouched())
    monkeypatch.setattr(smtp, "_DOT_LINE", Untouched())
    assert smtp.to_wire(built) is built
