"""A throwaway MIT Kerberos realm on loopback for Postern's GSSAPI tests.

Kdc(directory) writes a krb5.conf and a kdc.conf into <directory>/krb5, creates a database
with kdb5_util, adds principals with kadmin.local, exports the service key to a keytab and
runs krb5kdc in the foreground on 127.0.0.1 at a free port (UDP and TCP). Nothing is read
from or written to /etc: every tool gets KRB5_CONFIG and KRB5_KDC_PROFILE, and the clients a
private credential cache (KRB5CCNAME).

No DNS is ever used: the realm's KDC is a numeric address, and krb5.conf turns off
dns_lookup_kdc, dns_lookup_realm, rdns and dns_canonicalize_hostname, so the service
principal for "localhost" is exactly pop/localhost@REALM. The replay cache is off
(KRB5RCACHETYPE=none) so nothing lands in /var/tmp.

Typical use (see test_sasl.py):

    kdc = Kdc(world.dir)            # skips the test when the MIT KDC tools are missing
    test.addCleanup(kdc.stop)
    kdc.add_user("alice", "alice-krb-pw")
    keytab = kdc.add_service("pop", "localhost")
    kdc.apply_environment(test)     # so posternd (started later) and clients see the realm
    kdc.kinit("alice", "alice-krb-pw")
"""

import os
import shutil
import signal
import socket
import subprocess

from postern_harness import DEFAULT_TIMEOUT, missing, scaled, wait_for

REALM = "POSTERN.TEST"

TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit", "klist", "kdestroy")


def _which(tool):
    return shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}", f"/sbin/{tool}")
         if os.access(p, os.X_OK)), None)


def kdc_available():
    """(True, "") or (False, why): whether an MIT KDC can be run here."""
    missing = [t for t in TOOLS if _which(t) is None]
    if missing:
        return False, "MIT Kerberos tools missing: " + ", ".join(missing) + \
            " (apt-get install krb5-kdc krb5-admin-server krb5-user)"
    return True, ""


def _free_port():
    """A port free for both TCP and UDP on 127.0.0.1 at the time of the call."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port for the KDC")


class Kdc:
    def __init__(self, directory, realm=REALM):
        ok, why = kdc_available()
        if not ok:
            missing(why)
        self.realm = realm
        self.dir = os.path.join(directory, "krb5")
        os.makedirs(self.dir, exist_ok=True)
        self.krb5_conf = os.path.join(self.dir, "krb5.conf")
        self.kdc_conf = os.path.join(self.dir, "kdc.conf")
        self.ccache = os.path.join(self.dir, "ccache")
        self.log_path = os.path.join(self.dir, "kdc.log")
        self.proc = None
        self.port = None
        self._saved_env = None
        self._start()

    # -- environment
    @property
    def env(self):
        """Variables every Kerberos tool and client of this realm needs."""
        return {
            "KRB5_CONFIG": self.krb5_conf,
            "KRB5_KDC_PROFILE": self.kdc_conf,
            "KRB5CCNAME": "FILE:" + self.ccache,
            "KRB5RCACHETYPE": "none",
            "KRB5_TRACE": os.path.join(self.dir, "trace.log"),
        }

    def environ(self, base=None):
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        return env

    def apply_environment(self, test):
        """Puts the realm's variables into os.environ until the test ends, so that posternd
        (which the harness starts with the test's environment) uses this krb5.conf.

        For sanitizer builds it also adds a LeakSanitizer suppression for MIT's GSS-API
        library: libgssglue's first call into it allocates a 16-byte OID set that is never
        freed (once per process, not per login), which LeakSanitizer reports at exit."""
        variables = dict(self.env)
        supp = os.path.join(self.dir, "lsan.supp")
        with open(supp, "w") as f:
            f.write("leak:libgssapi_krb5.so\nleak:libgssglue.so\n")
        lsan = os.environ.get("LSAN_OPTIONS", "")
        variables["LSAN_OPTIONS"] = (lsan + ":" if lsan else "") + "suppressions=" + supp
        saved = {k: os.environ.get(k) for k in variables}
        os.environ.update(variables)

        def restore():
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        test.addCleanup(restore)

    def _run(self, argv, input_text=None, check=True):
        res = subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], capture_output=True,
                             env=self.environ(), cwd=self.dir, timeout=scaled(60),
                             input=(input_text or "").encode())
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}):\n"
                                 + (res.stdout + res.stderr).decode("utf-8", "replace"))
        return res

    # -- realm set-up
    def _write_config(self):
        with open(self.krb5_conf, "w") as f:
            f.write(f"""[libdefaults]
  default_realm = {self.realm}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  dns_canonicalize_hostname = false
  rdns = false
  udp_preference_limit = 1
  ignore_acceptor_hostname = false
  forwardable = false

[realms]
  {self.realm} = {{
    kdc = 127.0.0.1:{self.port}
  }}

[domain_realm]
  localhost = {self.realm}
""")
        with open(self.kdc_conf, "w") as f:
            f.write(f"""[kdcdefaults]
  kdc_listen = 127.0.0.1:{self.port}
  kdc_tcp_listen = 127.0.0.1:{self.port}

[realms]
  {self.realm} = {{
    database_name = {self.dir}/principal
    key_stash_file = {self.dir}/stash
    acl_file = {self.dir}/kadm5.acl
    kdc_listen = 127.0.0.1:{self.port}
    kdc_tcp_listen = 127.0.0.1:{self.port}
    max_life = 1h
    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
  }}

[logging]
  kdc = FILE:{self.log_path}
""")
        with open(os.path.join(self.dir, "kadm5.acl"), "w") as f:
            f.write("")

    def _start(self):
        self.port = _free_port()
        self._write_config()
        self._run(["kdb5_util", "create", "-s", "-r", self.realm, "-P", "postern-master-key"])
        err = open(os.path.join(self.dir, "krb5kdc.out"), "ab")
        try:
            self.proc = subprocess.Popen(
                [_which("krb5kdc"), "-n", "-r", self.realm, "-P",
                 os.path.join(self.dir, "krb5kdc.pid")],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=self.environ(),
                cwd=self.dir, close_fds=True)
        finally:
            err.close()

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"krb5kdc exited with {self.proc.returncode}:\n"
                                     + self.log())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False
        wait_for(listening, what="krb5kdc listening")

    def log(self):
        text = ""
        for name in ("krb5kdc.out", "kdc.log"):
            p = os.path.join(self.dir, name)
            if os.path.exists(p):
                with open(p, "rb") as f:
                    text += f.read().decode("utf-8", "replace")
        return text

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DEFAULT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(DEFAULT_TIMEOUT)
        self.proc = None

    # -- principals and tickets
    def kadmin(self, query):
        return self._run(["kadmin.local", "-r", self.realm, "-q", query])

    def add_user(self, name, password):
        self.kadmin(f"addprinc -pw {password} {name}")

    def add_service(self, service, host, keytab=None):
        """Creates service/host with a random key and exports it; returns the keytab path."""
        keytab = keytab or os.path.join(self.dir, f"{service}.keytab")
        self.kadmin(f"addprinc -randkey {service}/{host}")
        self.kadmin(f"ktadd -k {keytab} {service}/{host}")
        os.chmod(keytab, 0o600)
        return keytab

    def kinit(self, name, password):
        """Gets a ticket-granting ticket into the private cache, the password on stdin."""
        pwfile = os.path.join(self.dir, f"{name.replace('/', '_')}.password")
        with open(pwfile, "w") as f:
            f.write(password + "\n")
        os.chmod(pwfile, 0o600)
        with open(pwfile) as f:
            res = subprocess.run([_which("kinit"), name], stdin=f, capture_output=True,
                                 env=self.environ(), cwd=self.dir, timeout=scaled(60))
        if res.returncode != 0:
            raise AssertionError(f"kinit {name} failed:\n"
                                 + (res.stdout + res.stderr).decode("utf-8", "replace")
                                 + "\n--- KDC log ---\n" + self.log()[-3000:])
        return res

    def kdestroy(self):
        self._run(["kdestroy"], check=False)

    def tickets(self):
        return self._run(["klist"], check=False).stdout.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# A GSSAPI (RFC 4752) POP3 client, run by a Python that has the `gssapi` module (Debian's
# python3-gssapi, which links MIT's libgssapi_krb5 directly).

GSSAPI_CLIENT = r'''
import base64, json, socket, sys
import gssapi

host, port, service, target, authzid, mode = sys.argv[1:7]
out = {"lines": []}
s = socket.create_connection((host, int(port)), timeout=30)
f = s.makefile("rb")

def line():
    l = f.readline().decode("latin-1").rstrip("\r\n")
    out["lines"].append("S: " + l)
    return l

def send(text):
    out["lines"].append("C: " + text[:60])
    s.sendall(text.encode() + b"\r\n")

try:
    line()  # greeting
    name = gssapi.Name(f"{service}@{target}", gssapi.NameType.hostbased_service)
    ctx = gssapi.SecurityContext(name=name, usage="initiate",
                                 flags=[gssapi.RequirementFlag.mutual_authentication,
                                        gssapi.RequirementFlag.integrity])
    token = ctx.step(None)
    initial = "AUTH GSSAPI " + base64.b64encode(token).decode()
    # RFC 5034 section 4: an initial response only if the command line stays within 255
    # octets (CRLF included); Kerberos tokens never do, so they follow an empty challenge.
    if mode == "initial" and len(initial) + 2 <= 255:
        send(initial)
    else:
        send("AUTH GSSAPI")
        l = line()
        if not (l == "+" or l.startswith("+ ")):
            raise SystemExit(json.dumps(dict(out, result=l)))
        send(base64.b64encode(token).decode())
    while True:
        l = line()
        if not (l == "+" or l.startswith("+ ")):  # a continuation, not +OK
            out["result"] = l
            break
        data = base64.b64decode(l[2:]) if len(l) > 2 else b""
        if not ctx.complete:
            reply = ctx.step(data)
            send(base64.b64encode(reply or b"").decode())
            continue
        if mode == "cancel":
            send("*")
            continue
        # RFC 4752 section 3.1: unwrap the server's layers, answer "no layer" + authzid.
        layers = ctx.unwrap(data).message
        out["server_layers"] = layers.hex()
        reply = bytes([1, 0, 0, 0]) + authzid.encode()
        send(base64.b64encode(ctx.wrap(reply, False).message).decode())
    if out["result"].startswith("+OK"):
        send("STAT")
        out["stat"] = line()
    send("QUIT")
    line()
except Exception as e:  # reported to the test, which fails with the transcript
    out["error"] = repr(e)
print(json.dumps(out))
'''


def gssapi_python():
    """A Python interpreter that can import gssapi, or None."""
    import sys
    for exe in (sys.executable, "/usr/bin/python3"):
        if exe and os.access(exe, os.X_OK):
            res = subprocess.run([exe, "-c", "import gssapi"], capture_output=True,
                                 timeout=scaled(30))
            if res.returncode == 0:
                return exe
    return None
