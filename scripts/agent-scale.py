"""Agent scale, for scripts/agent-scale.sh: one agent with 1,000 upstreams and 100 services over a
discovery directory of 10,000 services, on loopback. Prints its start time, idle RSS and CPU, and
the cost of Synapse rewriting every discovery file at once. Every wait is bounded."""
import json, os, socket, subprocess, sys, tempfile, time, urllib.request

CORDON = os.path.abspath(sys.argv[1])
DISCOVERY = int(os.environ.get("SCALE_DISCOVERY", "10000"))
UPSTREAMS = int(os.environ.get("SCALE_UPSTREAMS", "1000"))
SERVICES = int(os.environ.get("SCALE_SERVICES", "100"))
IDLE_SECONDS = float(os.environ.get("SCALE_IDLE_SECONDS", "10"))
IDENTITIES = 10  # the upstreams are dialled as these identities, a hundred each
TICK = os.sysconf("SC_CLK_TCK")
work = tempfile.mkdtemp(prefix="cordon-scale-")
# Synapse's directory is under /run, a tmpfs, on most hosts: the discovery files go on one too.
shm = tempfile.mkdtemp(prefix="cordon-scale-", dir="/dev/shm") if os.path.isdir("/dev/shm") else work
procs = []

def cleanup():
    for p in procs:
        p.terminate()
    for p in procs:
        try: p.wait(timeout=20)
        except subprocess.TimeoutExpired: p.kill()
    subprocess.run(["rm", "-rf", work, shm])

import atexit
atexit.register(cleanup)

def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout

def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK

def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0

def svc(i): return f"svc{i:05d}"

def write_discovery(d, generation):
    """Every service file, as Synapse writes it: a temporary file, then a rename."""
    for i in range(DISCOVERY):
        backends = [{"name": f"{svc(i)}-{b}", "host": f"127.{1 + i // 62500 % 200}.{i // 250 % 250}.{1 + i % 250}",
                     "port": 8000 + b, "id": None, "weight": 1 + generation, "haproxy_server_options": None,
                     "labels": {"cordon_mtls_port": str(14000 + b)}} for b in range(3)]
        tmp = os.path.join(d, f".{svc(i)}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(backends, f)
        os.rename(tmp, os.path.join(d, f"{svc(i)}.json"))

def status(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as r:
        return json.load(r)

def until(what, deadline_s, check):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if check(): return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"agent-scale: {what} not within {deadline_s} s (logs in {work})")

ca, tls, state = (os.path.join(work, x) for x in ("ca", "tls", "state"))
disc = os.path.join(shm, "discovery")
for d in (tls, disc, state):
    os.makedirs(d)
run(CORDON, "ca", "init", "--dir", ca, "--trust-domain", "scale.internal")
identities = [svc(i) for i in range(SERVICES)] + [f"app{i}" for i in range(IDENTITIES)]
for name in identities:
    run(CORDON, "cert", "issue", "--ca", ca, "--service", name, "--out", os.path.join(tls, name))
t = time.monotonic()
write_discovery(disc, 0)
first_write = time.monotonic() - t
with open(os.path.join(work, "policy.toml"), "w") as f:
    f.write('[modes]\n"*" = "learn"\n')
admin = port()
config = [f'trust_domain = "scale.internal"', f'discovery_dir = "{disc}"', f'policy = "{work}/policy.toml"',
          f'state_dir = "{state}"', f'admin = "127.0.0.1:{admin}"', 'host = "scale"',
          f'[tls]\nca = "{tls}/{svc(0)}/ca.pem"\ndir = "{tls}"']
for i in range(SERVICES):
    config.append(f'[[service]]\nname = "{svc(i)}"\nlisten = "127.0.0.1:0"\napp = "127.0.0.1:9"')
for i in range(UPSTREAMS):
    config.append(f'[[upstream]]\nservice = "{svc(SERVICES + i)}"\nlisten = "127.0.0.1:0"\nidentity = "app{i % IDENTITIES}"')
with open(os.path.join(work, "cordon.toml"), "w") as f:
    f.write("\n".join(config) + "\n")

t0 = time.monotonic()
agent = subprocess.Popen([CORDON, "agent", "--config", os.path.join(work, "cordon.toml")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "agent.log"), "w"))
procs.append(agent)
seen = {}
def ready():
    if agent.poll() is not None:
        sys.exit(f"agent-scale: the agent exited ({agent.returncode}); see {work}/agent.log")
    s = status(admin)
    seen.update(s)
    return (s["discovery"]["services"] == DISCOVERY and len(s["upstreams"]) == UPSTREAMS
            and all(u["listen"] and len(u["backends"]) == 3 for u in s["upstreams"]))
until("the agent serving every upstream", 60, ready)
start_s = time.monotonic() - t0
cpu_start = cpu(agent.pid)
rss_start = status_kib(agent.pid, "VmRSS")
generation = seen["discovery"]["generation"]

# Idle: no traffic, no changes; what the agent costs doing nothing.
c0, w0 = cpu(agent.pid), time.monotonic()
time.sleep(IDLE_SECONDS)
idle_cpu = (cpu(agent.pid) - c0) / (time.monotonic() - w0) * 100
rss_idle = status_kib(agent.pid, "VmRSS")

# Synapse rewrites every file at once (a new weight in each): how long until the agent serves the
# new backends, and what it costs.
c0, w0 = cpu(agent.pid), time.monotonic()
write_discovery(disc, 1)
rewrite_s = time.monotonic() - w0
def settled():
    s = status(admin)
    return s["discovery"]["generation"] > generation and all(
        b["weight"] == 2 for u in s["upstreams"] for b in u["backends"])
until("the rewritten discovery to be served", 60, settled)
served_s = time.monotonic() - w0
# The reloads that follow the burst (the watcher coalesces them) are part of the cost.
time.sleep(2)
reload_cpu = cpu(agent.pid) - c0 - 2 * idle_cpu / 100
gen_after = status(admin)["discovery"]["generation"]
hwm = status_kib(agent.pid, "VmHWM")
rss_after = status_kib(agent.pid, "VmRSS")

print(f"agent with {UPSTREAMS} upstreams and {SERVICES} services over {DISCOVERY} discovery services"
      f" ({DISCOVERY} files written in {first_write:.2f} s)")
print(f"  start: {start_s:.2f} s to serve every upstream (process start to /status showing all bound,"
      f" {cpu_start:.2f} s CPU), RSS {rss_start / 1024:.1f} MiB")
print(f"  idle: {idle_cpu:.2f}% CPU over {IDLE_SECONDS:.0f} s, RSS {rss_idle / 1024:.1f} MiB")
print(f"  rewrite of all {DISCOVERY} files by the writer: {rewrite_s:.2f} s; new backends served"
      f" {served_s:.2f} s after it began; agent CPU {reload_cpu:.2f} s,"
      f" {gen_after - generation} snapshot(s) published; RSS {rss_after / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB")
