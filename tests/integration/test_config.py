"""posternd's command line and configuration: --version, --check-config, -C, and refusing to
start with a bad config (messages "FILE:LINE: key: reason" on stderr, non-zero exit)."""

import os
import re
import socket
import tomllib
import unittest

from postern_harness import (HERE, PosternTestCase, Server, parse_duration, run_posternd,
                             sanitizer_findings, scaled, toml_text)


def project_version():
    with open(os.path.join(HERE, "..", "..", "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*postern\s+VERSION\s+([0-9.]+)", f.read())
    return m.group(1) if m else None


class ConfigBase(PosternTestCase):
    def check_config(self, path, flag="--config"):
        res = run_posternd(["--check-config", flag, path])
        self.assertEqual(sanitizer_findings(res.stdout + res.stderr), [], res.stderr)
        return res

    def effective(self, path):
        res = self.check_config(path)
        self.assertEqual(res.returncode, 0, f"--check-config failed:\n{res.stderr}")
        try:
            return res.stdout, tomllib.loads(res.stdout)
        except tomllib.TOMLDecodeError as e:
            self.fail(f"--check-config output is not TOML ({e}):\n{res.stdout}")

    def config_lines(self):
        """The default test config as a list of lines (index + 1 = line number)."""
        return toml_text(self.world.config).split("\n")

    def write_lines(self, lines, name="bad.toml"):
        return self.world.write_config("\n".join(lines) + "\n", name=name)

    def assertLocated(self, stderr, path, line, key):
        """stderr names FILE:LINE: key: reason (key may be written with its section)."""
        section, _, name = key.rpartition(".")
        files = "|".join(re.escape(p) for p in (path, os.path.basename(path)))
        rx = rf"(?m)(^|\s)({files}):{line}: ({re.escape(section)}\.)?{re.escape(name)}: \S"
        self.assertRegex(stderr, rx, f"expected '{path}:{line}: {key}: <reason>'")


class Version(ConfigBase):
    def test_version(self):
        res = run_posternd(["--version"])
        self.assertEqual(res.returncode, 0, res.stderr)
        version = project_version()
        self.assertIsNotNone(version)
        self.assertRegex(res.stdout, rf"(^|\D){re.escape(version)}(\D|$)")
        self.assertEqual(sanitizer_findings(res.stdout + res.stderr), [])


class CheckConfig(ConfigBase):
    def test_prints_effective_config(self):
        path = self.world.write_config()
        text, cfg = self.effective(path)
        c = self.world.config
        self.assertEqual(cfg["server"]["listen"], ["127.0.0.1:0"])
        self.assertEqual(parse_duration(cfg["server"]["idle_timeout"]), 60)
        self.assertEqual(cfg["server"]["max_connections"], 10000)
        self.assertEqual(cfg["server"]["max_connections_per_ip"], 200)
        self.assertEqual(cfg["server"]["max_bad_commands"], 20)
        self.assertEqual(cfg["mail"]["location"], c["mail"]["location"])
        self.assertEqual(cfg["auth"]["passdb"], c["auth"]["passdb"])
        self.assertAlmostEqual(parse_duration(cfg["auth"]["failure_delay"]), 0.2)
        self.assertEqual(cfg["log"]["level"], "debug")
        self.assertEqual(cfg["log"]["target"], "stderr")

    def test_short_option_alias(self):
        path = self.world.write_config()
        long = self.check_config(path, "--config")
        short = self.check_config(path, "-C")
        self.assertEqual(short.returncode, 0, short.stderr)
        self.assertEqual(short.stdout, long.stdout)

    def test_defaults_are_shown(self):
        path = self.world.write_config(toml_text({
            "mail": {"location": self.world.config["mail"]["location"]},
            "auth": {"passdb": self.world.config["auth"]["passdb"]},
        }))
        text, cfg = self.effective(path)
        for section, key in (("server", "listen"), ("server", "idle_timeout"),
                             ("server", "max_connections"),
                             ("server", "max_connections_per_ip"),
                             ("server", "max_bad_commands"), ("auth", "failure_delay"),
                             ("log", "level"), ("log", "target")):
            self.assertIn(key, cfg.get(section, {}), f"{section}.{key} missing:\n{text}")
        # RFC 1939 section 3: an autologout timer of at least 10 minutes.
        self.assertGreaterEqual(parse_duration(cfg["server"]["idle_timeout"]), 600)
        self.assertGreater(cfg["server"]["max_bad_commands"], 0)

    def test_duration_forms(self):
        forms = [("idle_timeout", 'idle_timeout = "60s"', "server", given, seconds)
                 for given, seconds in ((45, 45), ('"45s"', 45), ('"2m"', 120),
                                        ('"1h"', 3600))]
        forms += [("failure_delay", 'failure_delay = "200ms"', "auth", given, seconds)
                  for given, seconds in (('"1500ms"', 1.5), ('"500ms"', 0.5), ('"2s"', 2),
                                         (1, 1))]
        for key, default_line, section, given, seconds in forms:
            with self.subTest(key=key, given=given):
                lines = self.config_lines()
                lines[lines.index(default_line)] = f"{key} = {given}"
                text, cfg = self.effective(self.write_lines(lines, "durations.toml"))
                self.assertAlmostEqual(parse_duration(cfg[section][key]), seconds)

    def test_empty_file_is_valid(self):
        text, cfg = self.effective(self.world.write_config("", name="empty.toml"))
        self.assertIn("listen", cfg.get("server", {}))

    def test_dovecot_style_location_parameters_are_accepted(self):
        root = self.world.mail_root
        self.world.config["mail"]["location"] = (f"maildir:{root}/%u/Maildir:INDEX={root}/idx/%u"
                                                 ":LAYOUT=fs")
        text, cfg = self.effective(self.world.write_config())
        self.assertTrue(cfg["mail"]["location"].startswith(f"maildir:{root}/%u/Maildir"))

    def test_output_round_trips(self):
        # Feeding the printed config back in gives the same effective config (comments,
        # which may name the source file, aside).
        text, cfg = self.effective(self.world.write_config())
        again = self.world.write_config(text, name="effective.toml")
        text2, cfg2 = self.effective(again)
        self.assertEqual(cfg2, cfg)


BAD_VALUES = [
    ("server", "idle_timeout", '"abc"'),
    ("server", "idle_timeout", '"-5s"'),
    ("server", "idle_timeout", '"10x"'),
    ("server", "idle_timeout", "true"),
    ("server", "max_connections", "-1"),
    ("server", "max_connections", '"many"'),
    ("server", "max_connections_per_ip", "1.5"),
    ("server", "max_bad_commands", "-3"),
    ("server", "listen", '["not-an-address:110"]'),
    ("server", "listen", '["127.0.0.1:99999"]'),
    ("server", "listen", '["127.0.0.1:-1"]'),
    ("server", "listen", '["[::1:110"]'),
    ("auth", "failure_delay", '"soon"'),
    ("auth", "passdb", '"nosuchdb:/etc/x"'),
    ("mail", "location", '"nosuchstore:/var/x"'),
    ("log", "level", '"loud"'),
    ("log", "target", '"printer"'),
    # From docs/configuration.md:
    ("server", "idle_timeout", '"1.5s"'),
    ("server", "idle_timeout", '"1h30m"'),
    ("server", "idle_timeout", '"30S"'),
    ("server", "idle_timeout", '"500ms"'),
    ("server", "idle_timeout", '"25h"'),
    ("auth", "failure_delay", '"61s"'),
    ("server", "max_connections", "0"),
    ("server", "max_bad_commands", "0"),
    ("server", "threads", "1025"),
    ("server", "threads", '"4"'),
    ("server", "processes", "0"),
    ("server", "processes", "-2"),
    ("server", "processes", "100000"),
    ("server", "processes", "1.5"),
    ("server", "processes", '"3"'),
    ("server", "processes", '"all"'),
    ("server", "processes", "true"),
    ("server", "listen", "[]"),
    ("server", "listen", '["localhost:110"]'),
    ("server", "listen", '["::1:110"]'),
    ("server", "listen", '["127.0.0.1"]'),
    ("server", "listen", '["127.0.0.1:1100", "127.0.0.1:1100"]'),
    ("server", "user", '"bad user"'),
    ("server", "greeting", '""'),
    ("mail", "location", '"maildir:/srv/../etc/%u"'),
    ("mail", "location", '"maildir:relative/%u"'),
    ("mail", "location", '"maildir:/srv/%u:NOSUCHPARAM=1"'),
    ("mail", "location", '"maildir:/srv/%q"'),
    ("auth", "passdb", '"passwd-file:relative/users"'),
    ("log", "syslog_ident", '"has space"'),
]


class BadConfig(ConfigBase):
    def bad_config(self, section, key, value):
        """The test config with section.key set to `value` (TOML text): (path, line)."""
        lines = self.config_lines()
        start = lines.index(f"[{section}]")
        for i in range(start + 1, len(lines)):
            if lines[i].startswith(f"{key} = "):
                lines[i] = f"{key} = {value}"
                break
            if lines[i].startswith("[") or lines[i] == "":
                lines.insert(i, f"{key} = {value}")
                break
        path = self.write_lines(lines)
        return path, i + 1

    def test_bad_values_are_reported_with_file_line_and_key(self):
        for section, key, value in BAD_VALUES:
            with self.subTest(key=f"{section}.{key}", value=value):
                path, line = self.bad_config(section, key, value)
                res = self.check_config(path)
                self.assertNotEqual(res.returncode, 0, f"accepted {key} = {value}")
                self.assertLocated(res.stderr, path, line, f"{section}.{key}")

    def test_unknown_key_is_reported(self):
        # A misspelt key silently ignored would leave a production setting at its default.
        path, line = self.bad_config("server", "max_conections", "5")
        res = self.check_config(path)
        self.assertNotEqual(res.returncode, 0, "a misspelt key was accepted")
        self.assertLocated(res.stderr, path, line, "server.max_conections")

    def test_syntax_error_names_file_and_line(self):
        path = self.world.write_config('[server]\nlisten = ["127.0.0.1:0"]\n'
                                       'idle_timeout = "30s\n', name="syntax.toml")
        res = self.check_config(path)
        self.assertNotEqual(res.returncode, 0)
        files = "|".join(re.escape(p) for p in (path, os.path.basename(path)))
        self.assertRegex(res.stderr, rf"({files}):3:")

    def test_missing_file(self):
        path = self.world.path("does-not-exist.toml")
        res = self.check_config(path)
        self.assertNotEqual(res.returncode, 0)
        self.assertIn("does-not-exist.toml", res.stderr)

    def test_server_refuses_to_start_with_bad_config(self):
        path, line = self.bad_config("server", "idle_timeout", '"abc"')
        srv = Server(self.world, path, self.world.path("refused.log"))
        self.world.servers.append(srv)
        rc = srv.wait_exit(scaled(15))
        self.assertNotEqual(rc, 0)
        log = srv.log()
        self.assertLocated(log, path, line, "server.idle_timeout")
        self.assertNotIn("listening on", log)
        self.assertEqual(sanitizer_findings(log), [])

    def test_server_refuses_to_start_when_port_is_taken(self):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            self.world.config["server"]["listen"] = [f"127.0.0.1:{port}"]
            srv = Server(self.world, self.world.write_config(), self.world.path("taken.log"))
            self.world.servers.append(srv)
            rc = srv.wait_exit(scaled(15))
        self.assertNotEqual(rc, 0, "started although its port was taken")
        log = srv.log()
        self.assertIn(str(port), log, "the error should name the address")
        self.assertEqual(sanitizer_findings(log), [])

    def test_good_config_starts(self):
        self.world.add_user("alice", "pw")
        srv = self.world.start()
        conn = srv.session(self.world.mailboxes["alice"])
        self.assertTrue(conn.quit().startswith("+OK"))
        self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    unittest.main()
