"""The bounce mailbox over IMAP (MAILER_BOUNCE_MAILBOX): list, fetch and file away messages.

`imaps://user:password@host[:port]/FOLDER` connects with TLS from the start (port 993),
`imap://` with STARTTLS (port 143): never in clear. Messages are addressed by UID, so a
message is fetched, recorded and then moved (or deleted) by the same number even when
others arrive meanwhile. IMAPClient does the protocol.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class MailboxError(Exception):
    """The mailbox cannot be reached or used; the message says why, in one line."""


@dataclass(frozen=True)
class MailboxUrl:
    tls: str  # "ssl" (imaps) or "starttls" (imap)
    host: str
    port: int
    user: str
    password: str
    folder: str

    @property
    def shown(self) -> str:
        """The URL for logs: no password."""
        scheme = "imaps" if self.tls == "ssl" else "imap"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{self.folder}"


def parse_url(url: str) -> MailboxUrl:
    parts = urlsplit(url)
    if parts.scheme not in ("imap", "imaps") or not parts.hostname:
        raise ValueError("the bounce mailbox is imaps://user:password@host[:port]/FOLDER")
    if not parts.username or parts.password is None:
        raise ValueError("the bounce mailbox URL needs a user and a password")
    tls = "ssl" if parts.scheme == "imaps" else "starttls"
    return MailboxUrl(
        tls=tls,
        host=parts.hostname,
        port=parts.port or (993 if tls == "ssl" else 143),
        user=unquote(parts.username),
        password=unquote(parts.password),
        folder=unquote(parts.path.lstrip("/")) or "INBOX",
    )


class Mailbox:
    """One connection to the bounce folder; use as a context manager."""

    def __init__(self, url: MailboxUrl, *, ca_file: str | None = None, timeout: float = 30.0):
        self.url = url
        self.ca_file = ca_file
        self.timeout = timeout
        self.client = None

    def __enter__(self) -> Mailbox:
        from imapclient import IMAPClient

        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            client = IMAPClient(self.url.host, port=self.url.port, ssl=self.url.tls == "ssl",
                                ssl_context=context, timeout=self.timeout)
            if self.url.tls == "starttls":
                client.starttls(context)
            client.login(self.url.user, self.url.password)
            client.select_folder(self.url.folder)
        except Exception as e:
            raise MailboxError(f"{self.url.shown}: {_words(e)}") from e
        self.client = client
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            try:
                self.client.logout()
            except Exception:  # noqa: BLE001 - the connection is going away anyway
                pass
            self.client = None

    def uids(self, limit: int) -> list[int]:
        """The UIDs of the messages waiting (not marked deleted), oldest first."""
        return sorted(self._call(self.client.search, ["NOT", "DELETED"]))[:limit]

    def sizes(self, uids: list[int]) -> dict[int, int]:
        data = self._call(self.client.fetch, uids, ["RFC822.SIZE"])
        return {uid: int(d.get(b"RFC822.SIZE", 0)) for uid, d in data.items()}

    def fetch(self, uid: int) -> bytes | None:
        """The raw message, without setting \\Seen; None if it is gone meanwhile."""
        data = self._call(self.client.fetch, [uid], ["BODY.PEEK[]"])
        return data.get(uid, {}).get(b"BODY[]")

    def file_away(self, uids: list[int], folder: str | None) -> None:
        """Move the messages to `folder` (created if missing), or delete them (None)."""
        if not uids:
            return
        if folder is None:
            self._call(self.client.delete_messages, uids)
            self._call(self.client.uid_expunge, uids)
            return
        if not self._call(self.client.folder_exists, folder):
            self._call(self.client.create_folder, folder)
        if self.client.has_capability("MOVE"):
            self._call(self.client.move, uids, folder)
        else:
            self._call(self.client.copy, uids, folder)
            self._call(self.client.delete_messages, uids)
            self._call(self.client.uid_expunge, uids)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            raise MailboxError(f"{self.url.shown}: {_words(e)}") from e


def _words(e: Exception) -> str:
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
