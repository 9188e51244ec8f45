"""Server-side request forgery: a webhook may not reach loopback, private, link-local or
metadata addresses, by address or by a name that resolves there, unless allowed."""

from __future__ import annotations

import pytest

from mailer.hooks.addresses import AddressRefused, check_url, resolve
from mailer.hooks.post import post


def refused(url: str, allow_http: bool = True) -> str:
    with pytest.raises(AddressRefused) as e:
        _scheme, host, port = check_url(url, allow_http=allow_http)
        resolve(host, port, allow_private=False)
    return str(e.value)


@pytest.mark.parametrize("url, why", [
    ("https://127.0.0.1/hook", "loopback"),
    ("https://127.8.9.10:8443/hook", "loopback"),
    ("https://10.1.2.3/hook", "private"),
    ("https://172.16.5.4/hook", "private"),
    ("https://172.31.255.1/hook", "private"),
    ("https://192.168.1.1/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://[::1]/hook", "loopback"),
    ("https://[fd12:3456::1]/hook", "private"),
    ("https://[fe80::1]/hook", "link-local"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://0.0.0.0/hook", "private"),
    ("https://localhost/hook", "loopback"),  # a name that resolves to 127.0.0.1 (and ::1)
])
def test_internal_addresses_and_names_resolving_there_are_refused(url, why):
    message = refused(url)
    assert why in message and "MAILER_WEBHOOK_ALLOW_PRIVATE" in message


def test_a_name_is_shown_with_the_address_it_resolved_to():
    assert refused("https://localhost:8443/hook").startswith("localhost (")


def test_public_addresses_pass():
    for url in ("https://93.184.216.34/hook", "https://[2606:2800:220:1::]:8443/x"):
        _scheme, host, port = check_url(url, allow_http=False)
        assert resolve(host, port, allow_private=False) in url


def test_only_https_unless_http_is_allowed():
    assert "https://" in refused("http://93.184.216.34/hook", allow_http=False)
    assert "MAILER_WEBHOOK_ALLOW_HTTP" in refused("http://93.184.216.34/h", allow_http=False)
    assert check_url("http://93.184.216.34/hook", allow_http=True)[0] == "http"
    for bad in ("ftp://example.com/x", "javascript:alert(1)", "https:///nohost",
                "https://user:pw@example.com/x", "https://example.com:99999/x",
                "https://" + "a" * 2000 + ".com/"):
        with pytest.raises(AddressRefused):
            check_url(bad, allow_http=True)


def test_private_addresses_are_allowed_when_the_operator_says_so():
    assert resolve("127.0.0.1", 80, allow_private=True) == "127.0.0.1"


def test_an_attempt_to_a_refused_address_makes_no_connection():
    import socket
    import threading

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(1.5)
        port = server.getsockname()[1]
        accepted = []

        def accept():
            try:
                accepted.append(server.accept())
            except TimeoutError:
                pass

        thread = threading.Thread(target=accept)
        thread.start()
        outcome = post(f"http://localhost:{port}/hook", b"{}", {}, allow_http=True,
                       allow_private=False)
        thread.join()
    assert outcome.refused and not outcome.ok and outcome.status is None
    assert "loopback" in outcome.excerpt and accepted == []
