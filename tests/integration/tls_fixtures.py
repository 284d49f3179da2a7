"""TLS helpers for Postern's integration tests: a throwaway PKI, [tls] configuration, TLS
connections from Python and runs of `openssl s_client`.

The PKI is made with the `openssl` command line in the test's own directory: a server CA, two
server certificates (the second one for reload tests), a client CA and a client certificate.
Keys are EC P-256. Server certificates name DNS:localhost and IP:127.0.0.1, so clients may
verify either the numeric address they connect to or the fixed name "localhost", which is
only ever used for SNI and certificate checks and is never resolved.

Only 127.0.0.1 is contacted.
"""

import hashlib
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import warnings

from postern_harness import DEFAULT_TIMEOUT, Pop3Conn, scaled

SERVER_NAME = "localhost"
OPENSSL = shutil.which("openssl")

# "listening on 127.0.0.1:PORT" or "listening on 127.0.0.1:PORT (tls)".
LISTEN_LINE_RE = re.compile(r"listening on (\[[0-9A-Fa-f:.]+\]|[0-9.]+):(\d+)([^\n]*)")


def _openssl(*args, cwd=None):
    res = subprocess.run([OPENSSL, *args], capture_output=True, timeout=scaled(60),
                         stdin=subprocess.DEVNULL, cwd=cwd)
    if res.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n"
                             + res.stderr.decode("utf-8", "replace"))
    return res


def _replace_file(src, dst):
    """Copies src over dst atomically (write beside, then rename), like a deploy script."""
    tmp = f"{dst}.new"
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, dst)


def cert_der(pem_path):
    with open(pem_path) as f:
        text = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    return ssl.PEM_cert_to_DER_cert(m.group(0))


def fingerprint(der):
    """SHA-256 of a DER certificate as upper-case hex pairs joined by ':'."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def file_fingerprint(pem_path):
    return fingerprint(cert_der(pem_path))


class Pki:
    """Certificates for one test, under <dir>/pki."""

    def __init__(self, directory):
        self.dir = os.path.join(directory, "pki")
        os.makedirs(self.dir, exist_ok=True)
        self.ca_cert, self.ca_key = self.make_ca("ca", "Postern Test CA")
        # The paths the server is configured with; reload tests replace their contents.
        self.server_cert = os.path.join(self.dir, "server.pem")
        self.server_key = os.path.join(self.dir, "server.key")
        self.a_cert, self.a_key = self.issue("server-a", "localhost", "server")
        self.b_cert, self.b_key = self.issue("server-b", "localhost", "server", org="Second")
        self.install(self.a_cert, self.a_key)
        self.client_ca_cert, self.client_ca_key = self.make_ca("client-ca", "Postern Client CA")
        self.client_cert, self.client_key = self.issue(
            "client-alice", "alice", "client", ca=(self.client_ca_cert, self.client_ca_key),
            email="alice@example.org")

    def path(self, name):
        return os.path.join(self.dir, name)

    def make_ca(self, name, cn):
        cert, key = self.path(f"{name}.pem"), self.path(f"{name}.key")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", key, "-out", cert, "-subj", f"/CN={cn}", "-days", "30",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return cert, key

    def issue(self, name, cn, kind, ca=None, email=None, org=None):
        """A leaf certificate signed by `ca` (default: the server CA); returns (cert, key)."""
        ca_cert, ca_key = ca or (self.ca_cert, self.ca_key)
        cert, key, csr, ext = (self.path(f"{name}.pem"), self.path(f"{name}.key"),
                               self.path(f"{name}.csr"), self.path(f"{name}.ext"))
        subject = f"/CN={cn}" + (f"/O={org}" if org else "") + (
            f"/emailAddress={email}" if email else "")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", key, "-out", csr, "-subj", subject)
        if kind == "server":
            lines = ["extendedKeyUsage = serverAuth",
                     f"subjectAltName = DNS:{SERVER_NAME}, IP:127.0.0.1"]
        else:
            lines = ["extendedKeyUsage = clientAuth"]
            if email:
                lines.append(f"subjectAltName = email:{email}")
        with open(ext, "w") as f:
            f.write("[v3]\nbasicConstraints = critical, CA:FALSE\n"
                    "keyUsage = critical, digitalSignature\n" + "\n".join(lines) + "\n")
        _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
                 "-set_serial", "0x" + secrets.token_hex(8), "-days", "30", "-sha256",
                 "-extfile", ext, "-extensions", "v3", "-out", cert)
        os.chmod(key, 0o600)
        return cert, key

    def install(self, cert, key):
        """Puts cert and key at the configured server paths (atomically, cert first)."""
        _replace_file(cert, self.server_cert)
        _replace_file(key, self.server_key)


def configure_tls(world, pki, mode="ondemand", tls_listen=True, listen=True, client_ca=False,
                  min_version=None, **auth):
    """Adds [tls] (and [server] tls_listen, [auth] keys) to world.config.

    Returns the number of 'listening on' lines to wait for."""
    server = world.config["server"]
    server["listen"] = ["127.0.0.1:0"] if listen else []
    if tls_listen:
        server["tls_listen"] = ["127.0.0.1:0"]
    else:
        server.pop("tls_listen", None)
    tls = {"cert": pki.server_cert, "key": pki.server_key, "mode": mode}
    if min_version:
        tls["min_version"] = min_version
    if client_ca:
        tls["client_ca"] = pki.client_ca_cert
    world.config["tls"] = tls
    world.config["auth"].update(auth)
    return len(server["listen"]) + (1 if tls_listen else 0)


def listener_ports(srv):
    """(plain ports, implicit-TLS ports) from the server's 'listening on' lines."""
    plain, tls = [], []
    for _host, port, rest in LISTEN_LINE_RE.findall(srv.log()):
        (tls if "tls" in rest.lower() else plain).append(int(port))
    return plain, tls


# ---------------------------------------------------------------------------------------------
# Python TLS clients

def client_context(pki=None, verify=True, minimum=None, maximum=None, ciphers=None,
                   cert=None, key=None):
    """An SSLContext for tests. verify: trust only the test CA and check the name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(pki.ca_cert)
        ctx.check_hostname = True
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if ciphers:
            ctx.set_ciphers(ciphers)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_socket(port, ctx, server_hostname=SERVER_NAME, timeout=None):
    """A TLS socket to 127.0.0.1:port after a completed handshake."""
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def tls_connect(world, port, ctx, greet=True, server_hostname=SERVER_NAME):
    """A Pop3Conn over implicit TLS; reads and checks the greeting unless greet=False."""
    conn = Pop3Conn(sock=tls_socket(port, ctx, server_hostname))
    world.on_cleanup(conn.close)
    if greet:
        g = conn.read_greeting()
        if not g.startswith("+OK"):
            raise AssertionError(f"greeting over TLS: {g!r}")
    return conn


def starttls(world, conn, ctx, server_hostname=SERVER_NAME):
    """STLS on a plaintext Pop3Conn; returns a new Pop3Conn over TLS on the same socket.

    Fails if the server sent anything after its +OK before the handshake."""
    st = conn.cmd("STLS")
    if not st.startswith("+OK"):
        raise AssertionError(f"STLS: {st!r}")
    if conn.buf:
        raise AssertionError(f"plaintext after the STLS reply: {bytes(conn.buf)!r}")
    tls = Pop3Conn(sock=ctx.wrap_socket(conn.sock, server_hostname=server_hostname))
    tls.greeting = conn.greeting
    world.on_cleanup(tls.close)
    return tls


def peer_fingerprint(port, pki, starttls_first=False):
    """Fingerprint of the certificate a new connection is shown (pop3s, or STLS first)."""
    ctx = client_context(pki)
    if starttls_first:
        conn = Pop3Conn(port)
        try:
            conn.read_greeting()
            st = conn.cmd("STLS")
            if not st.startswith("+OK"):
                raise AssertionError(f"STLS: {st!r}")
            s = ctx.wrap_socket(conn.sock, server_hostname=SERVER_NAME)
        except BaseException:
            conn.close()
            raise
    else:
        s = tls_socket(port, ctx)
    try:
        return fingerprint(s.getpeercert(binary_form=True))
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# openssl s_client

def s_client(port, pki, stdin=b"", starttls=False, quiet=True, extra=(), timeout=None):
    """Runs `openssl s_client` against 127.0.0.1:port, verifying against the test CA.

    quiet: only application data on stdout, stdin EOF does not end the session (the server's
    close does). Otherwise s_client prints the session and the server certificate and ends
    at stdin EOF. Returns the CompletedProcess (bytes)."""
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SERVER_NAME,
            "-CAfile", pki.ca_cert, "-verify_return_error", "-verify_hostname", SERVER_NAME,
            "-nocommands"]
    if starttls:
        argv += ["-starttls", "pop3"]
    argv += ["-quiet"] if quiet else ["-no_ign_eof"]
    argv += list(extra)
    return subprocess.run(argv, input=stdin, capture_output=True,
                          timeout=timeout or scaled(60))


def s_client_fingerprint(port, pki, starttls=False):
    """The fingerprint of the server certificate s_client saw."""
    res = s_client(port, pki, starttls=starttls, quiet=False)
    out = res.stdout.decode("latin-1")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    if not m:
        raise AssertionError("no certificate in s_client output:\n" + out[-3000:]
                             + res.stderr.decode("latin-1")[-2000:])
    return fingerprint(ssl.PEM_cert_to_DER_cert(m.group(0)))


def split_replies(data, multiline):
    """Splits a raw reply stream into [(status, body or None)].

    multiline: one bool per expected reply (True for commands with multi-line +OK replies).
    Bodies are raw (still dot-stuffed) without the terminating ".CRLF". Raises AssertionError
    if the stream does not hold exactly these replies."""
    out = []
    rest = bytes(data)
    for i, multi in enumerate(multiline):
        end = rest.find(b"\r\n")
        if end < 0:
            raise AssertionError(f"reply {i}: no status line in {rest[:200]!r}")
        status = rest[:end].decode("latin-1")
        rest = rest[end + 2:]
        body = None
        if multi and status.startswith("+OK"):
            if rest.startswith(b".\r\n"):
                body, rest = b"", rest[3:]
            else:
                term = rest.find(b"\r\n.\r\n")
                if term < 0:
                    raise AssertionError(f"reply {i} ({status!r}): unterminated body")
                body, rest = rest[:term + 2], rest[term + 5:]
        out.append((status, body))
    if rest:
        raise AssertionError(f"unexpected bytes after the replies: {rest[:300]!r}")
    return out
