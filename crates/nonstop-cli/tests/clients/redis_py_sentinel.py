"""redis-py's Sentinel support against a nonstop cluster, unchanged: the harness passes the
sentinel addresses, kills the primary when this script says "written", and says "killed".
The script then writes until the new primary answers and checks every acknowledged write."""

import sys
import time

from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError
from redis.sentinel import MasterNotFoundError, Sentinel

sentinels = [tuple(arg.rsplit(":", 1)) for arg in sys.argv[1:]]
sentinel = Sentinel([(host, int(port)) for host, port in sentinels], socket_timeout=1.0)
primary = sentinel.master_for("kv", socket_timeout=1.0)

for i in range(100):
    primary.set(f"py{i}", i)
print("written", flush=True)
assert sys.stdin.readline().strip() == "killed"

killed = time.monotonic()
while True:
    try:
        primary.set("after", "failover")
        break
    except (ConnectionError, ReadOnlyError, TimeoutError, MasterNotFoundError) as error:
        if time.monotonic() - killed > 20:
            raise SystemExit(f"no primary within 20 s: {error!r}")
        time.sleep(0.02)
took_ms = (time.monotonic() - killed) * 1000

for i in range(100):
    value = primary.get(f"py{i}")
    assert value == str(i).encode(), f"acknowledged write py{i} lost: {value!r}"
print(f"ok {took_ms:.0f} ms to the first write on {sentinel.discover_master('kv')}", flush=True)
