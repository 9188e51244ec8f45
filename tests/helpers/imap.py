"""A real IMAP server for the bounce mailbox tests: Debian's dovecot on free ports, with a
certificate generated here, passwd-file users, and its state in a temporary folder."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers.servers import free_port, wait_until

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def _certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class Dovecot:
    """dovecot -F in its own folder; `url(folder)` is a MAILER_BOUNCE_MAILBOX for a user."""

    def __init__(self, users: dict[str, str]):
        self.folder = Path(tempfile.mkdtemp(prefix="mailer-dovecot-"))
        self.users = users
        self.imap_port, self.imaps_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def ca_file(self) -> str:
        return str(self.folder / "cert.pem")

    def url(self, user: str, folder: str = "INBOX", tls: bool = True) -> str:
        if tls:
            return f"imaps://{user}:{self.users[user]}@127.0.0.1:{self.imaps_port}/{folder}"
        return f"imap://{user}:{self.users[user]}@127.0.0.1:{self.imap_port}/{folder}"

    def start(self) -> Dovecot:
        f = self.folder
        for sub in ("run", "home"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        cert, key = _certificate(f)
        (f / "passwd").write_text(
            "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items())
        )
        me = pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() == 0:
            # As root dovecot drops to its own users (auth, logins; mail kept as `mail`),
            # which must reach the folder: it lives under /tmp, readable, not in pytest's
            # private tmp tree.
            owner = pwd.getpwnam("mail")
            internal = ""
            f.chmod(0o755)
            (f / "passwd").chmod(0o644)
            os.chown(f / "home", owner.pw_uid, owner.pw_gid)
        else:  # an unprivileged dovecot: every process runs as the test's user
            owner = pwd.getpwuid(os.getuid())
            internal = (f"default_internal_user = {me}\ndefault_login_user = {me}\n"
                        f"default_internal_group = {pwd.getpwuid(os.getuid()).pw_gid}\n")
        (f / "dovecot.conf").write_text(f"""
base_dir = {f}/run
state_dir = {f}/run
instance_name = mailer-test-{self.imaps_port}
log_path = {f}/dovecot.log
protocols = imap
listen = 127.0.0.1
{internal}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain login
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {f}/passwd
}}
userdb {{
  driver = static
  args = uid={owner.pw_uid} gid={owner.pw_gid} home={f}/home/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""")
        self._out = open(f / "stdout.log", "wb")
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(f / "dovecot.conf")],
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(self._ready, 30, 0.1, what=f"dovecot (log: {f}/dovecot.log)")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"dovecot exited: {self.log()}")
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.imaps_port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def log(self) -> str:
        out = ""
        for name in ("dovecot.log", "stdout.log"):
            path = self.folder / name
            if path.exists():
                out += path.read_text(errors="replace")[-3000:]
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._out.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def deliver(self, user: str, message: bytes, folder: str = "INBOX") -> None:
        """Put a message in the user's folder, as the MTA would (IMAP APPEND)."""
        with self.client(user) as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            c.append(folder, message)

    def client(self, user: str):
        import ssl

        from imapclient import IMAPClient

        c = IMAPClient("127.0.0.1", port=self.imaps_port, ssl=True,
                       ssl_context=ssl.create_default_context(cafile=self.ca_file), timeout=10)
        c.login(user, self.users[user])
        return _Session(c)

    def count(self, user: str, folder: str) -> int:
        with self.client(user) as c:
            if not c.folder_exists(folder):
                return 0
            return c.folder_status(folder, ["MESSAGES"])[b"MESSAGES"]


class _Session:
    def __init__(self, client):
        self.c = client

    def __enter__(self):
        return self.c

    def __exit__(self, *exc):
        try:
            self.c.logout()
        except Exception:  # noqa: BLE001
            pass


