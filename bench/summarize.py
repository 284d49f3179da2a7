#!/usr/bin/env python3
"""Turns compare.sh's raw results (one JSON object per line) into the comparison table.

Usage: summarize.py RESULTS.jsonl

Each line is {"row", "server", "round", "rc", "result"} with "result" a postern-bench JSON
line, or {"row", "server", "na": reason} for a server that cannot run a row, or the machine
baselines {"row": "machine", "result": {...}}. For every row the table shows the median over
rounds for each server with the lowest and highest round in brackets, Postern's ratio to the
best peer's median (in brackets, the lowest and highest ratio within one round) and the
target of issue 5. Lower-is-better rows (times, memory) have
ratios below 1 when Postern wins.
"""

import json
import statistics
import sys
from collections import defaultdict

SERVERS = ["postern", "dovecot", "popa3d", "nowork"]
NAMES = {"postern": "Postern", "dovecot": "Dovecot", "popa3d": "popa3d",
         "nowork": "no-work server"}
NOT_PEERS = {"postern", "nowork"}  # the no-work server is the machine's ceiling, not a peer


def later(result, key):
    its = result.get("iterations") or []
    if len(its) > 1:
        return statistics.median(it[key] for it in its[1:])
    return its[0][key] if its else None


def first(result, key):
    its = result.get("iterations") or []
    return its[0][key] if its else None


def deleting_quit(result):
    its = [it for it in result.get("iterations") or [] if it.get("deleted", 0) > 0]
    return its[-1]["quit_ms"] if its else None


def idle_field(name):
    return lambda r: (r.get("idle") or {}).get(name)


# (title, raw row, extractor, unit, higher_is_better, target text, target check)
# A check gets (postern value, best peer value, machine baselines) and returns True/False, or
# None when it cannot be decided.
ROWS = [
    ("full sessions/s, {clients} clients (USER PASS STAT UIDL RETR 1 QUIT)", "session",
     lambda r: r.get("per_s"), "/s", True, ">= 10x Dovecot",
     lambda p, b, m: None if b is None else p >= 10 * b),
    ("TLS sessions/s, pop3s", "tls-pop3s", lambda r: r.get("per_s"), "/s", True,
     ">= 2x Dovecot", lambda p, b, m: None if b is None else p >= 2 * b),
    ("TLS sessions/s, STLS", "tls-stls", lambda r: r.get("per_s"), "/s", True,
     ">= 2x Dovecot", lambda p, b, m: None if b is None else p >= 2 * b),
    ("RETR of one {large_mb} MB message (LF stored)", "retr-large", lambda r: r.get("mb_per_s"),
     " MB/s", True, ">= 3x popa3d", lambda p, b, m: None if b is None else p >= 3 * b),
    ("RETR cycling {cycle_n:,} x 10 KB messages", "retr-cycle", lambda r: r.get("mb_per_s"),
     " MB/s", True, ">= 2.5x Dovecot", lambda p, b, m: None if b is None else p >= 2.5 * b),
    # The same with 16 RETRs outstanding (RFC 2449 PIPELINING): one at a time, the row is
    # bound by the loopback round trip, not by the server's bandwidth.
    ("RETR cycling {cycle_n:,} x 10 KB messages, 16 pipelined", "retr-cycle-pipelined",
     lambda r: r.get("mb_per_s"), " MB/s", True, ">= 2.5x Dovecot",
     lambda p, b, m: None if b is None else p >= 2.5 * b),
    ("server PSS per idle authenticated session", "idle", idle_field("kib_per_session"),
     " KiB", False, "<= 16 KiB", lambda p, b, m: p <= 16),
    ("idle authenticated sessions held at once", "idle-max", idle_field("alive"), "", True,
     ">= 50,000", lambda p, b, m: p >= 50000),
    ("{big_n:,}-message Maildir: first login+STAT", "bigbox-maildir",
     lambda r: first(r, "login_stat_ms"), " ms", False, "<= 1.2x reading every file",
     lambda p, b, m: None if m.get("read_files_ms") is None else p <= 1.2 * m["read_files_ms"]),
    ("  the same, later logins", "bigbox-maildir", lambda r: later(r, "login_stat_ms"), " ms",
     False, "<= 30 ms", lambda p, b, m: p <= 30),
    ("  full UIDL listing", "bigbox-maildir", lambda r: later(r, "uidl_ms"), " ms", False,
     "<= 50 ms", lambda p, b, m: p <= 50),
    ("  full LIST", "bigbox-maildir", lambda r: later(r, "list_ms"), " ms", False, "", None),
    ("  QUIT deleting the last {delete}", "bigbox-maildir", deleting_quit, " ms", False, "", None),
    ("the same content as a mbox: first login+STAT", "bigbox-mbox",
     lambda r: first(r, "login_stat_ms"), " ms", False, "<= 0.5x popa3d",
     lambda p, b, m: None if b is None else p <= 0.5 * b),
    ("  the same, later logins", "bigbox-mbox", lambda r: later(r, "login_stat_ms"), " ms",
     False, "<= 30 ms", lambda p, b, m: p <= 30),
    ("  first QUIT after opening it", "bigbox-mbox", lambda r: first(r, "quit_ms"), " ms",
     False, "", None),
    ("  QUIT deleting the last {delete}", "bigbox-mbox", deleting_quit, " ms", False, "<= 50 ms",
     lambda p, b, m: p <= 50),
]


def number(v, unit):
    if unit in ("/s", "") or abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt(v, unit):
    return "n/a" if v is None else number(v, unit) + unit


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    runs = defaultdict(list)  # (row, server) -> [result]
    by_round = defaultdict(dict)  # (row, server) -> {round: result}
    errors = defaultdict(int)  # (row, server) -> error count over rounds
    failed = defaultdict(list)  # (row, server) -> [reason] for runs that did not start
    na = {}
    serial = {}  # (row, server) -> (requested, depth): pipelining asked for, not advertised
    machine = defaultdict(list)
    meta = {}
    rounds = set()
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            row, server = rec.get("row"), rec.get("server")
            if row == "meta":
                meta.update(rec)
                continue
            if row == "meta-end":
                meta["load_end"] = rec.get("load_end")
                continue
            if row == "machine":
                for k, v in (rec.get("result") or {}).items():
                    machine[k].append(v)
                continue
            if "na" in rec:
                na[(row, server)] = rec["na"]
                continue
            rounds.add(rec.get("round"))
            result = rec.get("result")
            if result is None:
                failed[(row, server)].append(rec.get("error", "did not run"))
                continue
            runs[(row, server)].append(result)
            by_round[(row, server)][rec.get("round")] = result
            errors[(row, server)] += result.get("errors", {}).get("total", 0)
            if 1 <= result.get("pipeline_depth", 1) < result.get("pipeline_requested", 1):
                serial[(row, server)] = (result["pipeline_requested"],
                                         result.get("pipeline_depth", 0))

    base = {k: statistics.median(v) for k, v in machine.items() if v}
    content = meta.get("content", {})
    words = {
        "clients": meta.get("clients", "?"),
        "large_mb": round(content.get("large", {}).get("mbox_bytes", 0) / 1e6) or "?",
        "cycle_n": content.get("cycle", {}).get("messages", 0),
        "big_n": content.get("bigbox", {}).get("messages", 0),
        "delete": meta.get("bigbox_delete", "?"),
    }
    smoke = meta.get("smoke", False)
    present = [s for s in SERVERS if any(k[1] == s for k in list(runs) + list(na))]

    head = ["scenario"] + [NAMES[s] for s in present] + ["Postern / best peer", "target",
                                                          "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for title, row, get, unit, higher, target, check in ROWS:
        if not any(k[0] == row for k in list(runs) + list(na) + list(failed)):
            continue
        med = {}
        cells = [title.format(**words)]
        for s in present:
            vals = [get(r) for r in runs.get((row, s), [])]
            vals = [v for v in vals if v is not None]
            if vals:
                med[s] = statistics.median(vals)
                cell = fmt(med[s], unit)
                if len(vals) > 1:
                    # The spread over rounds: on a shared machine it says how far to trust
                    # the median.
                    cell += f" [{number(min(vals), unit)}-{number(max(vals), unit)}]"
                if errors[(row, s)]:
                    cell += f" ({errors[(row, s)]} errors)"
                if (row, s) in serial:
                    cell += f" (depth {serial[(row, s)][1] or 1}: no PIPELINING)"
            elif (row, s) in na:
                cell = "n/a"
            elif (row, s) in failed:
                cell = "failed"
            else:
                cell = ""
            cells.append(cell)
        peers = {s: v for s, v in med.items() if s not in NOT_PEERS}
        best = None
        if peers:
            pick = max if higher else min
            best_server = pick(peers, key=peers.get)
            best = peers[best_server]
        p = med.get("postern")
        if p is not None and best:
            cell = f"{p / best:.2f}x {NAMES[best_server]}"
            # The same ratio round by round: both servers ran minutes apart at most, so this
            # is steadier than either median when other work comes and goes.
            ratios = []
            for rnd, res in by_round[(row, "postern")].items():
                peer_vals = [get(by_round[(row, s)][rnd]) for s in peers
                             if rnd in by_round[(row, s)]]
                peer_vals = [v for v in peer_vals if v]
                pv = get(res)
                if pv is not None and peer_vals:
                    ratios.append(pv / (max(peer_vals) if higher else min(peer_vals)))
            if len(ratios) > 1:
                cell += f" [{min(ratios):.2f}-{max(ratios):.2f}]"
            cells.append(cell)
        else:
            cells.append("")
        cells.append(target)
        verdict = ""
        if check is not None and p is not None and not smoke:
            ok = check(p, best, base)
            verdict = "" if ok is None else ("yes" if ok else "no")
        cells.append(verdict)
        lines.append("| " + " | ".join(cells) + " |")

    print(f"Medians of {len(rounds)} round(s) of {meta.get('duration_s', '?')} s runs; every "
          "server pinned to one CPU, the client to another."
          + (" Smoke run: small content, targets not judged." if smoke else ""))
    print(f"posternd: {meta.get('posternd', '?')}\n")
    print("\n".join(lines))
    if meta.get("load_start"):
        print(f"\nLoad average (1, 5, 15 min) at the start: {meta['load_start']}; at the end: "
              f"{meta.get('load_end', '?')}. Other work on the machine competes for the same "
              "two CPUs and makes every number noisier.")
    if base:
        print("\nWhat the machine allows (same CPU, warm page cache):")
        labels = {"read_files_ms": "read every file of the 100,000-message Maildir once",
                  "list_stat_ms": "list and stat those files",
                  "mbox_read_ms": "read the mbox once, sequentially"}
        for k, v in base.items():
            print(f"- {labels.get(k, k)}: {v:,.0f} ms")
    notes = [f"- {NAMES.get(s, s)}, {row}: n/a: {why}" for (row, s), why in sorted(na.items())]
    notes += [f"- {NAMES.get(s, s)}, {row}: {len(why)} run(s) did not complete: {why[0]}"
              for (row, s), why in sorted(failed.items())]
    notes += [f"- {NAMES.get(s, s)}, {row}: {n} errors over all rounds (see results.jsonl)"
              for (row, s), n in sorted(errors.items()) if n]
    notes += [f"- {NAMES.get(s, s)}, {row}: its CAPA does not list PIPELINING, so it ran with "
              f"{depth or 1} RETR outstanding, not {want}"
              for (row, s), (want, depth) in sorted(serial.items())]
    if notes:
        print("\nNotes:")
        print("\n".join(notes))


if __name__ == "__main__":
    main()
