"""Runs the topology benchmark for scripts/bench.sh. Loopback only; every load is bounded."""
import os, socket, statistics, subprocess, sys, tempfile, time

CORDON, LOADGEN = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BULK_MIB = int(os.environ.get("BENCH_BULK_MIB", "512"))
# Extra lines for both agents' [proxy] table, e.g. BENCH_PROXY="threads = 2" or
# BENCH_PROXY="reuse_connections = false", to measure a variant against the same HAProxy pair.
PROXY_EXTRA = os.environ.get("BENCH_PROXY", "").replace(";", "\n")
# Paced latency: requests per second, in total over 16 connections.
PACED = [int(r) for r in os.environ.get("BENCH_PACED", "2000,8000").split(",") if r]
# BENCH_BASELINE=path/to/an/older/cordon: a second cordon pair from that binary, measured in the
# same rounds as "cordon-baseline" (enforce), to show a change's cost or gain before and after.
BASELINE = os.path.abspath(os.environ["BENCH_BASELINE"]) if os.environ.get("BENCH_BASELINE") else None
# BENCH_PERF=dir: `perf record -g` of the proxies during every measurement of the first round, to
# dir/<topology>-<test>.data (read with `perf report -i ...`).
PERF = os.path.abspath(os.environ["BENCH_PERF"]) if os.environ.get("BENCH_PERF") else None
# BENCH_DECISIONS=1: two more cordon pairs whose inbound writes a decision record for every app
# connection (learn mode, no intention: each is a would-deny), one in cordon's format and one with
# decision_log_format = "ocsf", measured in the same rounds as "decisions-cordon" and
# "decisions-ocsf", to show what OCSF records cost the data plane.
DECISIONS = os.environ.get("BENCH_DECISIONS") == "1"
TICK = os.sysconf("SC_CLK_TCK")
work = tempfile.mkdtemp(prefix="cordon-bench-")
procs = []

def cleanup():
    for p in procs:
        p.terminate()
    for p in procs:
        try: p.wait(timeout=10)
        except subprocess.TimeoutExpired: p.kill()
    subprocess.run(["rm", "-rf", work])

import atexit
atexit.register(cleanup)

def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout

def start(args, log):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, log), "w"))
    procs.append(p)
    return p

def wait_port(p, what):
    # Up to 30 s: six agents start at once on a loaded machine.
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", p), timeout=0.2).close(); return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} never listened on {p}")

def cpu(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK

def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0

# --- the world: CA, certificates, backend, two HAProxies, two cordon agents ---
os.chdir(work)
TD = "bench.internal"
run(CORDON, "ca", "init", "--dir", "ca", "--trust-domain", TD)
for s in ("web", "db"):
    run(CORDON, "cert", "issue", "--ca", "ca", "--service", s, "--out", f"tls/{s}")
    with open(f"{s}.pem", "w") as f:
        f.write(open(f"tls/{s}/cert.pem").read() + open(f"tls/{s}/key.pem").read())

APP, HA_IN, HA_TLS, CO_OUT, CO_IN, CO_OUT_TLS = port(), port(), port(), port(), port(), port()
ADM_OUT, ADM_IN, ADM_OUT_TLS = port(), port(), port()
CO_OUT_H2, ADM_OUT_H2 = port(), port()
start([LOADGEN, "serve", f"127.0.0.1:{APP}"], "backend.log")
wait_port(APP, "backend")

ha_common = """global
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""
open("ha-out.cfg", "w").write(ha_common + f"""frontend plain_in
    bind 127.0.0.1:{HA_IN}
    default_backend db
backend db
    server db1 127.0.0.1:{HA_TLS} ssl crt {work}/web.pem ca-file {work}/ca/ca.pem verify required
""")
open("ha-in.cfg", "w").write(ha_common + f"""frontend tls_in
    bind 127.0.0.1:{HA_TLS} ssl crt {work}/db.pem ca-file {work}/ca/ca.pem verify required
    default_backend app
backend app
    server app 127.0.0.1:{APP}
""")
ha_out = start(["haproxy", "-db", "-f", "ha-out.cfg"], "ha-out.log")
ha_in = start(["haproxy", "-db", "-f", "ha-in.cfg"], "ha-in.log")

os.makedirs("discovery", exist_ok=True)
open("discovery/db.json", "w").write(
    f'[{{"host": "127.0.0.1", "port": {APP}, "name": "db-1", "labels": {{"cordon_mtls_port": "{CO_IN}"}}}}]')
POLICY = {
    "learn": '[modes]\n"*" = "learn"\n[[intention]]\nsource = "web"\ndestination = "db"\naction = "allow"\n',
    "enforce": '[modes]\n"*" = "enforce"\n[[intention]]\nsource = "web"\ndestination = "db"\naction = "allow"\n',
}
open("policy.toml", "w").write(POLICY["learn"])
def agent_cfg(name, admin, body, proxy="", discovery="discovery", policy="policy.toml", log_format=None):
    # Only when asked: an older binary (BENCH_BASELINE) does not know decision_log_format.
    fmt_line = f'decision_log_format = "{log_format}"' if log_format else ""
    open(f"{name}.toml", "w").write(f"""trust_domain = "{TD}"
discovery_dir = "{discovery}"
policy = "{policy}"
state_dir = "state-{name}"
decision_log = "decisions-{name}.jsonl"
{fmt_line}
admin = "127.0.0.1:{admin}"
[tls]
ca = "ca/ca.pem"
dir = "tls"
[proxy]
max_connections = 20000
{PROXY_EXTRA}
{proxy}
{body}""")
agent_cfg("in", ADM_IN, f'[[service]]\nname = "db"\nlisten = "127.0.0.1:{CO_IN}"\napp = "127.0.0.1:{APP}"\n')
agent_cfg("out", ADM_OUT, f'[[upstream]]\nservice = "db"\nlisten = "127.0.0.1:{CO_OUT}"\nidentity = "web"\n')
# The same caller with a TLS handshake (resumed) to the inbound for every app connection: what the
# new-connection rate is without reusing connections between agents.
agent_cfg("out-tls", ADM_OUT_TLS, f'[[upstream]]\nservice = "db"\nlisten = "127.0.0.1:{CO_OUT_TLS}"\nidentity = "web"\n',
          "reuse_connections = false")
# The same caller carrying app connections as HTTP/2 streams to the same inbound (`cordon-h2/1`),
# to compare the two hops in the same rounds.
agent_cfg("out-h2", ADM_OUT_H2, f'[[upstream]]\nservice = "db"\nlisten = "127.0.0.1:{CO_OUT_H2}"\nidentity = "web"\n',
          'hop_protocol = "h2"')
co_in = start([CORDON, "agent", "--config", "in.toml"], "cordon-in.log")
co_out = start([CORDON, "agent", "--config", "out.toml"], "cordon-out.log")
co_out_tls = start([CORDON, "agent", "--config", "out-tls.toml"], "cordon-out-tls.log")
co_out_h2 = start([CORDON, "agent", "--config", "out-h2.toml"], "cordon-out-h2.log")
for p, what in ((HA_IN, "haproxy"), (HA_TLS, "haproxy"), (CO_OUT, "cordon"), (CO_IN, "cordon"), (CO_OUT_TLS, "cordon"),
                (CO_OUT_H2, "cordon")):
    wait_port(p, what)
if BASELINE:
    CO_OUT_B, CO_IN_B, ADM_OUT_B, ADM_IN_B = port(), port(), port(), port()
    os.makedirs("discovery-base", exist_ok=True)
    open("discovery-base/db.json", "w").write(
        f'[{{"host": "127.0.0.1", "port": {APP}, "name": "db-1", "labels": {{"cordon_mtls_port": "{CO_IN_B}"}}}}]')
    agent_cfg("in-base", ADM_IN_B, f'[[service]]\nname = "db"\nlisten = "127.0.0.1:{CO_IN_B}"\napp = "127.0.0.1:{APP}"\n')
    agent_cfg("out-base", ADM_OUT_B, f'[[upstream]]\nservice = "db"\nlisten = "127.0.0.1:{CO_OUT_B}"\nidentity = "web"\n',
              discovery="discovery-base")
    CO_OUT_BT, ADM_OUT_BT = port(), port()
    agent_cfg("out-base-tls", ADM_OUT_BT, f'[[upstream]]\nservice = "db"\nlisten = "127.0.0.1:{CO_OUT_BT}"\nidentity = "web"\n',
              "reuse_connections = false", discovery="discovery-base")
    co_in_b = start([BASELINE, "agent", "--config", "in-base.toml"], "cordon-in-base.log")
    co_out_b = start([BASELINE, "agent", "--config", "out-base.toml"], "cordon-out-base.log")
    co_out_bt = start([BASELINE, "agent", "--config", "out-base-tls.toml"], "cordon-out-base-tls.log")
    for p in (CO_OUT_B, CO_IN_B, CO_OUT_BT):
        wait_port(p, "baseline cordon")

DEC = {}  # format -> (outbound port, outbound agent, inbound agent, inbound admin port)
if DECISIONS:
    # No intention, learn: every app connection is a would-deny, and so a decision record.
    open("policy-would-deny.toml", "w").write('[modes]\n"*" = "learn"\n')
    for fmt in ("cordon", "ocsf"):
        out_p, in_p, adm_out, adm_in = port(), port(), port(), port()
        os.makedirs(f"discovery-{fmt}", exist_ok=True)
        open(f"discovery-{fmt}/db.json", "w").write(
            f'[{{"host": "127.0.0.1", "port": {APP}, "name": "db-1", "labels": {{"cordon_mtls_port": "{in_p}"}}}}]')
        agent_cfg(f"in-{fmt}", adm_in, f'[[service]]\nname = "db"\nlisten = "127.0.0.1:{in_p}"\napp = "127.0.0.1:{APP}"\n',
                  policy="policy-would-deny.toml", log_format=fmt)
        agent_cfg(f"out-{fmt}", adm_out, f'[[upstream]]\nservice = "db"\nlisten = "127.0.0.1:{out_p}"\nidentity = "web"\n',
                  discovery=f"discovery-{fmt}", policy="policy-would-deny.toml")
        i = start([CORDON, "agent", "--config", f"in-{fmt}.toml"], f"cordon-in-{fmt}.log")
        o = start([CORDON, "agent", "--config", f"out-{fmt}.toml"], f"cordon-out-{fmt}.log")
        DEC[fmt] = (out_p, o, i, adm_in)
    for out_p, _, _, _ in DEC.values():
        wait_port(out_p, "decisions cordon")

def set_mode(mode):
    tmp = "policy.toml.tmp"
    open(tmp, "w").write(POLICY[mode]); os.rename(tmp, "policy.toml")
    time.sleep(1.5)  # agents apply a new policy within a second

TOPOLOGIES = {
    "direct": (APP, []),
    "haproxy": (HA_IN, [ha_out.pid, ha_in.pid]),
    "cordon-learn": (CO_OUT, [co_out.pid, co_in.pid]),
    "cordon-enforce": (CO_OUT, [co_out.pid, co_in.pid]),
    "cordon-no-reuse": (CO_OUT_TLS, [co_out_tls.pid, co_in.pid]),
    "cordon-h2": (CO_OUT_H2, [co_out_h2.pid, co_in.pid]),
}
if BASELINE:
    TOPOLOGIES["cordon-baseline"] = (CO_OUT_B, [co_out_b.pid, co_in_b.pid])
    TOPOLOGIES["cordon-base-no-reuse"] = (CO_OUT_BT, [co_out_bt.pid, co_in_b.pid])
for fmt, (out_p, o, i, _) in DEC.items():
    TOPOLOGIES[f"decisions-{fmt}"] = (out_p, [o.pid, i.pid])
# Topologies measured by some tests only (the rest: every test).
ONLY = {"cordon-no-reuse": {"connect"}, "cordon-base-no-reuse": {"connect"}}
TESTS = {
    "bulk": lambda p: [LOADGEN, "bulk", f"127.0.0.1:{p}", "4", str(BULK_MIB)],
    "rr": lambda p: [LOADGEN, "rr", f"127.0.0.1:{p}", "16", str(SECONDS), "64"],
    "connect": lambda p: [LOADGEN, "connect", f"127.0.0.1:{p}", "16", str(SECONDS)],
}
for rate in PACED:
    TESTS[f"paced{rate}"] = lambda p, rate=rate: [LOADGEN, "paced", f"127.0.0.1:{p}", "16", str(SECONDS), "64", str(rate)]
# BENCH_TESTS=bulk,rr runs only those (the ratios need bulk, rr and connect).
if os.environ.get("BENCH_TESTS"):
    TESTS = {k: v for k, v in TESTS.items() if k in os.environ["BENCH_TESTS"].split(",")}
UNIT = {"bulk": "MiB/s", "connect": "conn/s", **{t: "req/s" for t in TESTS if t == "rr" or t.startswith("paced")}}
PER = {"bulk": "MiB", "connect": "conn", **{t: "req" for t in TESTS if t == "rr" or t.startswith("paced")}}
LATENCY = [t for t in TESTS if t == "rr" or t.startswith("paced")]
PACED = [rate for rate in PACED if f"paced{rate}" in TESTS]

results = {}  # (topology, test) -> list of dicts
mode = "learn"
order = list(TOPOLOGIES)
print(f"== topologies, {ROUNDS} alternating rounds, {SECONDS:g} s per measurement; proxy CPU from /proc")
for r in range(ROUNDS):
    rotated = order[r % len(order):] + order[:r % len(order)]
    for test, cmd in TESTS.items():
        for topo in rotated:
            if test not in ONLY.get(topo, {test}):
                continue
            want = "enforce" if topo in ("cordon-enforce", "cordon-no-reuse", "cordon-baseline", "cordon-base-no-reuse", "cordon-h2") else "learn"
            if topo.startswith("cordon") and want != mode:
                set_mode(want); mode = want
            p, pids = TOPOLOGIES[topo]
            perf = None
            if PERF and pids and r == 0:
                os.makedirs(PERF, exist_ok=True)
                perf = subprocess.Popen(["perf", "record", "-q", "-g", "-o", f"{PERF}/{topo}-{test}.data",
                                         "-p", ",".join(map(str, pids))],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
            before = cpu(pids)
            out = run(*cmd(p)).split()
            used = cpu(pids) - before
            if perf:
                perf.send_signal(2); perf.wait()
            value = float(out[1])
            kv = dict(x.split("=") for x in out[3:])
            # Work done: MiB each way, requests, connections.
            work_units = float(kv.get({"bulk": "mib", "connect": "done"}.get(test, "requests"), 0))
            row = {"value": value, "cpu_per_unit": used / work_units if work_units else 0, **kv}
            results.setdefault((topo, test), []).append(row)
            extra = f" p50={kv['p50_us']}us p99={kv['p99_us']}us" if test in LATENCY else ""
            cpu_txt = f" proxy_cpu={row['cpu_per_unit']*1e6:.1f}us/{PER[test]}" if pids else ""
            print(f"round {r+1} {topo:15} {test:8} {value:10.1f} {UNIT[test]}{extra}{cpu_txt}", flush=True)

def med(topo, test, key="value"):
    return statistics.median(float(x[key]) for x in results[(topo, test)])

print("\n== medians")
for test in TESTS:
    for topo in TOPOLOGIES:
        if (topo, test) not in results:
            continue
        line = f"{topo:15} {test:8} {med(topo, test):10.1f} {UNIT[test]}"
        if test in LATENCY:
            line += f"  p50 {med(topo, test, 'p50_us'):.0f} us  p99 {med(topo, test, 'p99_us'):.0f} us"
        if TOPOLOGIES[topo][1]:
            line += f"  proxy CPU {med(topo, test, 'cpu_per_unit')*1e6:.1f} us per {PER[test]}"
        print(line)
rss = {"haproxy": max(hwm_kib(ha_out.pid), hwm_kib(ha_in.pid)), "cordon": max(hwm_kib(co_out.pid), hwm_kib(co_in.pid), hwm_kib(co_out_tls.pid)),
       "cordon-h2": hwm_kib(co_out_h2.pid)}
print(f"peak RSS per proxy: haproxy {rss['haproxy']/1024:.1f} MiB, cordon {rss['cordon']/1024:.1f} MiB")
each = {"ha-out": ha_out, "ha-in": ha_in, "out": co_out, "out-tls": co_out_tls, "out-h2": co_out_h2, "in": co_in}
print("  each: " + ", ".join(f"{name} {hwm_kib(p.pid)/1024:.1f}" for name, p in each.items()) + " MiB"
      " (the inbound serves the framed, no-reuse and h2 hops)")

if BASELINE:
    print(f"\n== this build against the baseline {BASELINE} (both enforce, same rounds)")
    for test in TESTS:
        b, c = med("cordon-baseline", test, "cpu_per_unit"), med("cordon-enforce", test, "cpu_per_unit")
        print(f"{test:8} proxy CPU {b*1e6:8.1f} -> {c*1e6:8.1f} us per {PER[test]} ({c/b:5.2f}x)   "
              f"rate {med('cordon-baseline', test):10.1f} -> {med('cordon-enforce', test):10.1f} {UNIT[test]}")
    if "connect" in TESTS:
        b, c = med("cordon-base-no-reuse", "connect", "cpu_per_unit"), med("cordon-no-reuse", "connect", "cpu_per_unit")
        print(f"connect without reuse: proxy CPU {b*1e6:8.1f} -> {c*1e6:8.1f} us per conn ({c/b:5.2f}x)   "
              f"rate {med('cordon-base-no-reuse', 'connect'):10.1f} -> {med('cordon-no-reuse', 'connect'):10.1f} conn/s")
if DECISIONS:
    import urllib.request
    print("\n== decision records: OCSF against cordon's format (learn, every app connection a would-deny, same rounds)")
    for test in TESTS:
        c, o = med("decisions-cordon", test, "cpu_per_unit"), med("decisions-ocsf", test, "cpu_per_unit")
        print(f"{test:9} proxy CPU {c*1e6:8.1f} -> {o*1e6:8.1f} us per {PER[test]} ({o/c:5.2f}x)   "
              f"rate {med('decisions-cordon', test):10.1f} -> {med('decisions-ocsf', test):10.1f} {UNIT[test]}")
    for fmt, (_, _, _, adm) in DEC.items():
        text = urllib.request.urlopen(f"http://127.0.0.1:{adm}/metrics", timeout=5).read().decode()
        n = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                if l.startswith("cordon_verdicts_total") and 'outcome="would-deny"' in l)
        d = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("cordon_decision_log_dropped_total"))
        print(f"inbound {fmt:6}: {n:.0f} would-deny decisions handed to the decision log, {d:.0f} dropped")
print("\n== the HTTP/2 hop against the framed hop (both enforce, same inbound, same rounds)")
for test in TESTS:
    f, h = "cordon-enforce", "cordon-h2"
    line = (f"{test:9} rate {med(h, test)/med(f, test):5.2f}x   proxy CPU per {PER[test]} "
            f"{med(h, test, 'cpu_per_unit')/med(f, test, 'cpu_per_unit'):5.2f}x")
    if test in LATENCY:
        line += f"   p99 {med(h, test, 'p99_us')/med(f, test, 'p99_us'):5.2f}x"
    print(line + "   (h2/framed)")
print(f"peak RSS of the h2 outbound {rss['cordon-h2']/1024:.1f} MiB")
if not all(t in TESTS for t in ("bulk", "rr", "connect")):
    sys.exit(0)
print("\n== ratios (same run; cordon = cordon-enforce)")
def ratio(name, a, b, target, higher_is_better=True):
    ok = (a / b >= target) if higher_is_better else (a / b <= target)
    print(f"{name:44} {a/b:6.2f}x  target {'>=' if higher_is_better else '<='} {target}  {'met' if ok else 'NOT met'}")
c = "cordon-enforce"
# The data plane's targets against HAProxy (docs/performance.md, "Reading it").
ratio("keep-alive req/s, cordon/haproxy", med(c, "rr"), med("haproxy", "rr"), 1.5)
ratio("bulk MiB/s, cordon/haproxy", med(c, "bulk"), med("haproxy", "bulk"), 1.5)
ratio("proxy CPU per MiB of bulk, cordon/haproxy", med(c, "bulk", "cpu_per_unit"), med("haproxy", "bulk", "cpu_per_unit"), 0.5, False)
ratio("new conn/s, cordon/haproxy", med(c, "connect"), med("haproxy", "connect"), 5.0)
ratio("new conn/s, cordon without reuse/haproxy", med("cordon-no-reuse", "connect"), med("haproxy", "connect"), 6.0)
ratio("p99 latency at saturation, cordon/haproxy", med(c, "rr", "p99_us"), med("haproxy", "rr", "p99_us"), 0.5, False)
for rate in PACED:
    t = f"paced{rate}"
    ratio(f"p99 latency at {rate} req/s, cordon/haproxy", med(c, t, "p99_us"), med("haproxy", t, "p99_us"), 0.5, False)
    ratio(f"p50 latency at {rate} req/s, cordon/haproxy", med(c, t, "p50_us"), med("haproxy", t, "p50_us"), 0.5, False)
ratio("peak RSS per proxy, cordon/haproxy", rss["cordon"], rss["haproxy"], 1.0, False)
ratio("proxy CPU per request, cordon/haproxy", med(c, "rr", "cpu_per_unit"), med("haproxy", "rr", "cpu_per_unit"), 1.0, False)
ratio("proxy CPU per connection, cordon/haproxy", med(c, "connect", "cpu_per_unit"), med("haproxy", "connect", "cpu_per_unit"), 1.0, False)
ratio("proxy CPU per conn, without reuse/haproxy", med("cordon-no-reuse", "connect", "cpu_per_unit"), med("haproxy", "connect", "cpu_per_unit"), 1.0, False)
for test in TESTS:
    print(f"{'cordon/direct ' + test:44} {med(c, test)/med('direct', test):6.2f}x")
for rate in PACED:
    t = f"paced{rate}"
    print(f"{'added p99 at ' + str(rate) + ' req/s, cordon/haproxy':44} {med(c, t, 'p99_us') - med('direct', t, 'p99_us'):4.0f} / {med('haproxy', t, 'p99_us') - med('direct', t, 'p99_us'):.0f} us")
for test in ("bulk", "rr", "connect"):
    d = med("cordon-learn", test) / med(c, test)
    print(f"{'learn/enforce ' + test:44} {d:6.2f}x  target within 3%  {'met' if abs(d-1) <= 0.03 else 'NOT met'}")


# How the outbound agents carried the app connections to the inbound one (their admin endpoints).
import urllib.request
def carried(agent, adm):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{adm}/metrics", timeout=5).read().decode()
    except OSError as e:
        return f"(metrics unavailable: {e})"
    totals = {}
    for line in text.splitlines():
        for name in ("cordon_tls_handshakes_total", "cordon_hop_reused_total"):
            if line.startswith(name):
                kind = line.split('kind="', 1)[1].split('"')[0] if 'kind="' in line else ""
                key = name + (f"{{kind={kind}}}" if kind else "")
                totals[key] = totals.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(totals.items()))
print()
for agent, adm in (("out", ADM_OUT), ("out-tls", ADM_OUT_TLS), ("out-h2", ADM_OUT_H2)):
    print(f"== outbound agent {agent}, whole run: {carried(agent, adm)}")
