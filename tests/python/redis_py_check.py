"""redis-py against a three-peer meshcache mesh (run by tests/redis_py.rs).

Usage: redis_py_check.py PORT_A PORT_B PORT_C

Exercises what applications built on redis-py send: pipelines with and
without a transaction, WATCH, counters, SCAN iteration, pub/sub (ordinary
and sharded) from one peer to subscribers on the others, and redis-py's
client-side cache (CLIENT TRACKING) on one peer while another writes.
Exits non-zero on the first failed check.
"""

import sys
import time

import redis
from redis.cache import CacheConfig

DEADLINE = 20.0


def eventually(what, cond):
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {DEADLINE} s: {what}")


def next_message(ps, kind):
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        m = ps.get_message(timeout=1.0)
        if m is not None and m["type"] == kind:
            return m
    raise AssertionError(f"no {kind} within {DEADLINE} s")


def main():
    ports = [int(p) for p in sys.argv[1:4]]
    a, b, c = (redis.Redis(port=p, protocol=3, decode_responses=True) for p in ports)
    assert a.ping() and b.ping() and c.ping()

    # Counters, replicated as their results.
    a.set("counter", 10)
    assert a.incr("counter") == 11
    assert a.incrby("counter", 5) == 16
    assert a.decr("counter") == 15
    assert abs(a.incrbyfloat("float", 2.5) - 2.5) < 1e-9
    eventually("the counter reaches B", lambda: b.get("counter") == "15")
    assert b.incr("counter") == 16

    # A pipeline without a transaction: one round trip, replies in order.
    p = a.pipeline(transaction=False)
    p.set("x", 1).incr("x").append("log", "a").append("log", "b").get("x").getrange("log", 0, -1)
    assert p.execute() == [True, 2, 1, 2, "2", "ab"]

    # redis-py's default pipeline is a transaction (MULTI/EXEC): applied as
    # one on A, and its writes reach B together.
    p = a.pipeline()
    p.set("tx:a", 1).set("tx:b", 1).incr("tx:a").mget("tx:a", "tx:b")
    assert p.execute() == [True, True, 2, ["2", "1"]]
    eventually("the transaction reaches B", lambda: b.mget("tx:a", "tx:b") == ["2", "1"])

    # WATCH, redis-py's optimistic locking: a write from another peer
    # between WATCH and EXEC aborts the transaction (WatchError), and the
    # retry, run by redis-py's transaction helper, succeeds.
    with a.pipeline() as p:
        p.watch("tx:a")
        assert p.get("tx:a") == "2"
        before = a.get("tx:a")
        b.set("tx:a", 10)
        eventually("B's write reaches A", lambda: a.get("tx:a") != before)
        p.multi()
        p.set("tx:a", 3)
        try:
            p.execute()
            raise AssertionError("EXEC should have been aborted by B's write")
        except redis.WatchError:
            pass
    assert a.get("tx:a") == "10"

    def double(pipe):
        v = int(pipe.get("tx:a"))
        pipe.multi()
        pipe.set("tx:a", v * 2)

    assert a.transaction(double, "tx:a") == [True]
    assert a.get("tx:a") == "20"

    # SCAN iteration on another peer finds every key written on A.
    a.mset({f"user:{i}": i for i in range(500)})
    eventually(
        "SCAN on C finds the 500 users",
        lambda: len(set(c.scan_iter(match="user:*", count=50))) == 500,
    )
    assert sorted(c.keys("user:1?"), key=lambda k: int(k[5:])) == [f"user:{i}" for i in range(10, 20)]

    # Pub/sub: A publishes, subscribers on B (channel) and C (pattern)
    # hear it; PUBLISH counts A's own subscribers.
    on_b = b.pubsub()
    on_b.subscribe("events")
    next_message(on_b, "subscribe")
    on_c = c.pubsub()
    on_c.psubscribe("ev*")
    next_message(on_c, "psubscribe")
    assert a.publish("events", "hello") == 0
    m = next_message(on_b, "message")
    assert (m["channel"], m["data"]) == ("events", "hello"), m
    m = next_message(on_c, "pmessage")
    assert (m["pattern"], m["channel"], m["data"]) == ("ev*", "events", "hello"), m
    assert b.pubsub_numsub("events") == [("events", 1)]

    # Sharded pub/sub: SPUBLISH reaches SSUBSCRIBE clients only.
    on_c.ssubscribe("shard")
    next_message(on_c, "ssubscribe")
    assert a.spublish("shard", "s1") == 0
    m = next_message(on_c, "smessage")
    assert (m["channel"], m["data"]) == ("shard", "s1"), m

    for ps in (on_b, on_c):
        ps.close()

    client_side_caching(a, b, ports[1])
    print("redis-py", redis.__version__, "checks passed")


def client_side_caching(a, b, b_port):
    """redis-py's client-side cache on peer B while peer A writes: once B
    has applied a write, one round trip on the caching client brings the
    invalidation, and the cache never serves the older value after it."""
    cached = redis.Redis(port=b_port, protocol=3, decode_responses=True, cache_config=CacheConfig())
    cache = cached.get_cache()

    def fresh(key, want):
        eventually(f"B applies {key} = {want}", lambda: b.get(key) == want)
        cached.ping()
        got = cached.get(key)
        assert got == want, f"{key}: the cache served {got!r} after B had {want!r}"

    def gets_on_b():
        return b.info("commandstats").get("cmdstat_get", {}).get("calls", 0)

    keys = [f"csc:{i}" for i in range(20)]
    for k in keys:
        a.set(k, "v0")
    for k in keys:
        fresh(k, "v0")
    # The values are really cached: reading them again sends nothing.
    before = gets_on_b()
    for _ in range(5):
        for k in keys:
            assert cached.get(k) == "v0"
    assert gets_on_b() == before, "cached reads went to the server"
    assert cache.size >= len(keys), cache.size

    for r in range(1, 6):
        for k in keys:
            a.set(k, f"v{r}")
        for k in keys:
            fresh(k, f"v{r}")

    # DEL on A.
    a.delete(keys[0], keys[1])
    fresh(keys[0], None)
    fresh(keys[1], None)

    # A TTL set on A runs out on B: B's expiry pass invalidates it.
    a.set("csc:ttl", "soon", px=300)
    fresh("csc:ttl", "soon")

    def expired():
        cached.ping()
        return cached.get("csc:ttl") is None

    eventually("the expiry reaches the cache", expired)

    # FLUSHALL on A: a null invalidation, the whole cache dropped.
    a.flushall()
    eventually("B is empty", lambda: b.dbsize() == 0)
    cached.ping()
    for k in keys:
        assert cached.get(k) is None, k

    # Evictions on B (local to B: A keeps the keys).
    warm = [f"csc:warm:{i}" for i in range(200)]
    value = "w" * 1024
    for k in warm:
        a.set(k, value)
    eventually("B holds the warm keys", lambda: b.get(warm[-1]) == value)
    for k in warm:
        assert cached.get(k) == value
    b.config_set("maxmemory-policy", "allkeys-random")
    b.config_set("maxmemory", "128kb")
    cached.ping()
    evicted = 0
    for k in warm:
        if b.get(k) is None:
            evicted += 1
            got = cached.get(k)
            assert got is None, f"{k} was evicted on B but the cache served it"
    assert evicted >= 50, f"B evicted only {evicted} of {len(warm)}"
    b.config_set("maxmemory", "0")
    cached.close()


if __name__ == "__main__":
    main()
