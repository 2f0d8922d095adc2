"""Memory per open relayed connection: cordon's outbound -> inbound pair beside HAProxy's pair
doing the same (plaintext in, mTLS between the two, plaintext to the app), each holding N open
connections that have carried a byte each way. Loopback only; bounded in count and time.

    python3 scripts/conn_memory.py target/release/cordon [N]

Prints each proxy's resident memory with no connection and with N open, and the growth per
connection. Needs `haproxy` on PATH for the comparison (skipped otherwise). Each proxy holds two
sockets per connection, so N is lowered to fit the open-files hard limit where that is below
2 x N (say so in any figure quoted). MEM_PROXY adds lines to both agents' [proxy] table, e.g.
MEM_PROXY='hop_protocol = "h2"' for the HTTP/2 hop; NO_HAPROXY=1 skips HAProxy."""
import asyncio, os, resource, socket, subprocess, sys, tempfile, time

CORDON = os.path.abspath(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
work = tempfile.mkdtemp(prefix="cordon-mem-")
procs = []

def cleanup():
    for p in procs:
        p.terminate()
    for p in procs:
        try: p.wait(timeout=10)
        except subprocess.TimeoutExpired: p.kill()
    if not os.environ.get("KEEP"): subprocess.run(["rm", "-rf", work])

import atexit
atexit.register(cleanup)

want = 2 * N + 1024
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
except (ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < want:
        N = (hard - 1024) // 2
        print(f"open-files hard limit {hard}: measuring {N} connections, not {sys.argv[2] if len(sys.argv) > 2 else 10_000}")

def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout

def start(args, log):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, log), "w"))
    procs.append(p)
    return p

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def wait_port(p, what):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", p), timeout=0.2).close(); return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} never listened on {p}")

os.chdir(work)
TD = "mem.internal"
run(CORDON, "ca", "init", "--dir", "ca", "--trust-domain", TD)
for s in ("web", "db"):
    run(CORDON, "cert", "issue", "--ca", "ca", "--service", s, "--out", f"tls/{s}")
    with open(f"{s}.pem", "w") as f:
        f.write(open(f"tls/{s}/cert.pem").read() + open(f"tls/{s}/key.pem").read())

APP = port()

ECHO = r'''
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1:] * 2)
async def echo(reader, writer):
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
'''
# The app in its own process: the clients' process holds only their own N sockets.
start([sys.executable, "-c", ECHO, str(APP)], "app.log")
wait_port(APP, "echo app")


async def hold(addr, n):
    """Opens n connections to addr, a byte each way on each, and keeps them open."""
    conns, sem = [], asyncio.Semaphore(64)
    async def one():
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", addr), 20)
            w.write(b"x"); await w.drain()
            assert await asyncio.wait_for(r.readexactly(1), 20) == b"x"
            conns.append(w)
    await asyncio.gather(*(one() for _ in range(n)))
    return conns

def measure(name, entry, pids):
    async def go():
        before = [rss_kib(p) for p in pids]
        t0 = time.time()
        conns = await hold(entry, N)
        took = time.time() - t0
        await asyncio.sleep(2)  # let the proxies settle
        after = [rss_kib(p) for p in pids]
        for w in conns:
            w.close()
        return before, after, took
    before, after, took = asyncio.run(go())
    for role, b, a in zip(("outbound", "inbound"), before, after):
        print(f"{name:7} {role:8}: {b/1024:7.1f} MiB idle, {a/1024:7.1f} MiB with {N} open, "
              f"{(a-b)/N:6.2f} KiB per connection")
    total = sum(after) - sum(before)
    print(f"{name:7} pair    : {total/1024:7.1f} MiB for {N} connections ({total/N:.2f} KiB each across both), opened in {took:.1f} s")
    return [(a - b) / N for a, b in zip(after, before)]

results = {}
# --- cordon ---
CO_OUT, CO_IN = port(), port()
os.makedirs("discovery", exist_ok=True)
open("discovery/db.json", "w").write(
    f'[{{"host": "127.0.0.1", "port": {APP}, "name": "db-1", "labels": {{"cordon_mtls_port": "{CO_IN}"}}}}]')
open("policy.toml", "w").write('[modes]\n"*" = "learn"\n[[intention]]\nsource = "web"\ndestination = "db"\naction = "allow"\n')
def agent_cfg(name, body):
    open(f"{name}.toml", "w").write(f"""trust_domain = "{TD}"
discovery_dir = "discovery"
policy = "policy.toml"
state_dir = "state-{name}"
[tls]
ca = "ca/ca.pem"
dir = "tls"
[proxy]
max_connections = {N + 1000}
connect_timeout_ms = 10000
handshake_timeout_ms = 20000
{os.environ.get("MEM_PROXY", "").replace(";", chr(10))}
{body}""")
agent_cfg("in", f'[[service]]\nname = "db"\nlisten = "127.0.0.1:{CO_IN}"\napp = "127.0.0.1:{APP}"\n')
agent_cfg("out", f'[[upstream]]\nservice = "db"\nlisten = "127.0.0.1:{CO_OUT}"\nidentity = "web"\n')
co_in = start([CORDON, "agent", "--config", "in.toml"], "cordon-in.log")
co_out = start([CORDON, "agent", "--config", "out.toml"], "cordon-out.log")
wait_port(CO_IN, "cordon inbound"); wait_port(CO_OUT, "cordon outbound")
time.sleep(1)
results["cordon"] = measure("cordon", CO_OUT, [co_out.pid, co_in.pid])
for p in (co_out, co_in):
    p.terminate(); p.wait(timeout=30)

# --- HAProxy ---
if os.environ.get("NO_HAPROXY"):
    print("NO_HAPROXY set: no comparison")
    sys.exit(0)
if subprocess.run(["which", "haproxy"], capture_output=True).returncode != 0:
    print("haproxy not installed: no comparison")
    sys.exit(0)
HA_IN, HA_TLS = port(), port()
ha_common = f"""global
    maxconn {N + 1000}
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    maxconn {N + 1000}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
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
wait_port(HA_IN, "haproxy"); wait_port(HA_TLS, "haproxy")
time.sleep(1)
results["haproxy"] = measure("haproxy", HA_IN, [ha_out.pid, ha_in.pid])
c, h = results["cordon"], results["haproxy"]
print(f"per connection, cordon/haproxy: outbound {c[0]/h[0]:.2f}, inbound {c[1]/h[1]:.2f}")
