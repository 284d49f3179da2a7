"""Every configuration key, from the key list the parser itself has (`posternd
--list-config-keys`): set to its sample value (valid, not the default), `posternd --check-config`
must print it back, in its own table, with that value, and the printed configuration must read
back to the same output. And docs/configuration.md documents exactly the keys of that list.

No key is named here: a key added to the parser is tested (and must be documented) without
touching this file.
"""

import os
import re
import tomllib

from postern_harness import HERE, PosternTestCase, run_posternd, sanitizer_findings, toml_text

DOCS = os.path.join(HERE, "..", "..", "docs", "configuration.md")


def config_keys():
    """[(table, key, sample TOML text)] from posternd --list-config-keys."""
    res = run_posternd(["--list-config-keys"])
    if res.returncode != 0:
        raise AssertionError(f"posternd --list-config-keys failed:\n{res.stderr}")
    out = []
    for line in res.stdout.splitlines():
        m = re.fullmatch(r"([a-z0-9_]+)\.([a-z0-9_]+) = (.*)", line)
        if m is None:
            raise AssertionError(f"malformed --list-config-keys line {line!r}")
        out.append(m.groups())
    return out


def documented_keys():
    """{(table, key)} of the '### `key`' headings under each '## `[table]`' of the docs."""
    table = None
    out = set()
    with open(DOCS) as f:
        for line in f:
            m = re.match(r"## `\[([a-z0-9_]+)\]`\s*$", line)
            if m:
                table = m.group(1)
                continue
            if line.startswith("## "):
                table = None
                continue
            if table and line.startswith("### "):
                for name in re.findall(r"`([^`]+)`", line):
                    m = re.fullmatch(r"\[\[([a-z0-9_]+)\.([a-z0-9_]+)\]\]", name)
                    out.add((m.group(1), m.group(2)) if m else (table, name))
    return out


def config_text(cfg):
    """cfg ({table: {key: value}}) as TOML; an array of tables (server.listener) is written
    as [[table.key]] tables after the rest."""
    plain = {t: {k: v for k, v in keys.items() if not _is_table_array(v)} for t, keys in cfg.items()}
    text = toml_text(plain)
    for table, keys in cfg.items():
        for key, value in keys.items():
            if _is_table_array(value):
                for el in value:
                    text += f"\n[[{table}.{key}]]\n" + toml_text({"x": el}).split("\n", 1)[1]
    return text


def _is_table_array(v):
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def without_header(text):
    """--check-config output without its '# Effective configuration, read from PATH' line."""
    return "".join(line for line in text.splitlines(True) if not line.startswith("# "))


class ConfigKeys(PosternTestCase):
    def setUp(self):
        super().setUp()
        self.keys = config_keys()
        self.assertGreater(len(self.keys), 80, "the key list is suspiciously short")
        self.world.add_user("alice", "secret")

    def sample(self, text):
        return text.replace("@DIR@", self.world.dir)

    def sample_value(self, key, text):
        return tomllib.loads(f"{key} = {self.sample(text)}\n")[key]

    def base(self):
        """The test config with what other keys need beside them: tls.cert and tls.key (for
        the [tls] keys), proxy_trusted_networks (for a listener with proxy_protocol)."""
        cfg = {t: dict(v) for t, v in self.world.config.items()}
        cfg.setdefault("tls", {}).update({"cert": self.world.path("cert.pem"),
                                          "key": self.world.path("key.pem")})
        cfg["server"]["proxy_trusted_networks"] = ["127.0.0.1"]
        return cfg

    def check(self, text, name):
        path = self.world.write_config(text, name=name)
        res = run_posternd(["--check-config", "--config", path])
        self.assertEqual(sanitizer_findings(res.stdout + res.stderr), [], res.stderr)
        self.assertEqual(res.returncode, 0, f"--check-config refused {name}:\n{res.stderr}\n"
                                            f"--- {name} ---\n{text}")
        return res.stdout

    def round_trip(self, text, name):
        """--check-config of `text`, then of what it printed: both outputs must agree."""
        printed = self.check(text, name)
        again = self.check(printed, name + ".printed")
        self.assertEqual(without_header(again), without_header(printed),
                         f"{name}: the printed configuration reads back differently")
        return printed, tomllib.loads(printed)

    def test_every_key_has_a_non_default_sample(self):
        # The defaults, but for a passdb file that exists (another than the sample's).
        other = self.world.path("other-users")
        with open(other, "w"):
            pass
        defaults = tomllib.loads(self.check(toml_text({"auth": {"passdb": f"passwd-file:{other}"}}),
                                            "defaults.toml"))
        for table, key, sample in self.keys:
            with self.subTest(key=f"{table}.{key}"):
                self.assertNotEqual(sample, "", f"{table}.{key} has no sample value")
                value = self.sample_value(key, sample)
                self.assertNotEqual(defaults.get(table, {}).get(key), value,
                                    f"{table}.{key}: the sample is the default")

    def test_each_key_is_printed_back_with_its_value(self):
        for table, key, sample in self.keys:
            with self.subTest(key=f"{table}.{key}"):
                cfg = self.base()
                value = self.sample_value(key, sample)
                cfg.setdefault(table, {})[key] = value
                name = f"{table}.{key}.toml"
                text = config_text(cfg)
                _, printed = self.round_trip(text, name)
                self.assertIn(table, printed, f"[{table}] not printed")
                self.assertIn(key, printed[table], f"{table}.{key} not printed")
                self.assertEqual(printed[table][key], value,
                                 f"{table}.{key} printed with another value")

    def test_all_keys_at_once(self):
        cfg = {}
        for table, key, sample in self.keys:
            cfg.setdefault(table, {})[key] = self.sample_value(key, sample)
        # server.processes > 1 and fork mode exclude each other (each is checked on its own
        # above): the set keeps event mode.
        del cfg["server"]["process_model"]
        text = config_text(cfg)
        # The sample passdb file and mail location, made real for the checks that read them.
        os.makedirs(self.world.path("spool"), exist_ok=True)
        with open(self.world.path("users"), "a"):
            pass
        _, printed = self.round_trip(text, "all.toml")
        for table, keys in cfg.items():
            for key, value in keys.items():
                with self.subTest(key=f"{table}.{key}"):
                    self.assertEqual(printed.get(table, {}).get(key), value)

    def test_docs_list_exactly_the_parsers_keys(self):
        parser = {(t, k) for t, k, _ in self.keys}
        docs = documented_keys()
        self.assertEqual(sorted(parser - docs), [],
                         "keys the parser accepts that docs/configuration.md does not document")
        self.assertEqual(sorted(docs - parser), [],
                         "keys docs/configuration.md documents that the parser does not accept")
