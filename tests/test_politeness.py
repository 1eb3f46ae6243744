"""Per-host politeness: token bucket, Retry-After, AIMD, the breaker, and the scheduler that uses them."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.media.host_scheduler import HostScheduler, host_of
from pipeline.media.politeness import HostDown, HostPolicy, PolitenessParams, TokenBucket, parse_retry_after
from pipeline.core.records import Sample


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    "value, expected",
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # now is 07:28:00 below
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: no wait
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:10", None),  # no zone: not an HTTP-date
    ],
)
def test_parse_retry_after(value, expected):
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    assert parse_retry_after(value, now=now) == expected


# ---------------------------------------------------------------- token bucket


def test_token_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.wait_time(0.0) == 0.0
        bucket.take(0.0)
    assert bucket.wait_time(0.0) == pytest.approx(0.5)
    assert bucket.wait_time(0.5) == 0.0  # one token back after 1/rate seconds


def test_token_bucket_never_saves_more_than_its_burst():
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert bucket.wait_time(1000.0) == 0.0
    bucket.take(1000.0)
    bucket.take(1000.0)
    assert bucket.wait_time(1000.0) > 0


# ---------------------------------------------------------------- policy


def policy(clock, **params) -> HostPolicy:
    return HostPolicy(PolitenessParams(**params), clock=clock)


def test_connection_cap_per_host_leaves_other_hosts_free():
    clock = Clock()
    p = policy(clock, per_host_connections=2, per_host_rate=0)
    assert p.try_start("a") and p.try_start("a")
    assert not p.try_start("a")
    assert p.try_start("b")
    p.finish("a", None, 200, None)
    assert p.try_start("a")


def test_rate_per_host():
    clock = Clock()
    p = policy(clock, per_host_connections=100, per_host_rate=4, per_host_burst=1)
    assert p.try_start("a")
    assert not p.try_start("a")
    assert p.wait_time("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert p.try_start("a")


def test_retry_after_pauses_the_whole_host_and_halves_its_rate():
    clock = Clock()
    p = policy(clock, per_host_connections=8, per_host_rate=10, per_host_burst=10)
    assert p.try_start("a")
    p.finish("a", "http_429", 429, "2")
    assert p.paused_for("a") == pytest.approx(2.0)
    assert not p.try_start("a")
    assert p.try_start("b")  # another host is not paused
    clock.now += 2.0
    assert p.wait_time("a") == pytest.approx(1 / 5)  # rate halved to 5/s, no burst saved
    clock.now += 0.2
    assert p.try_start("a")


def test_retry_after_is_capped():
    clock = Clock()
    p = policy(clock, max_host_backoff=30)
    p.try_start("a")
    p.finish("a", "http_503", 503, "86400")
    assert p.paused_for("a") == pytest.approx(30.0)


def test_throttling_without_retry_after_backs_off_exponentially():
    clock = Clock()
    p = policy(clock, per_host_rate=0)
    pauses = []
    for _ in range(3):
        clock.now += 100
        p.try_start("a")
        p.finish("a", "http_429", 429, None)
        pauses.append(p.paused_for("a"))
    assert pauses == [pytest.approx(0.5), pytest.approx(1.0), pytest.approx(2.0)]


def test_successes_regain_the_rate_after_throttling():
    clock = Clock()
    p = policy(clock, per_host_connections=100, per_host_rate=10, per_host_burst=1)
    p.try_start("a")
    p.finish("a", "http_429", 429, "0")
    rates = []
    for _ in range(60):
        clock.now += 10
        assert p.try_start("a")
        p.finish("a", None, 200, None)
        rates.append(p._hosts["a"].bucket.rate)
    assert rates[0] < 10 and rates[-1] == 10


def test_breaker_trips_after_consecutive_failures_and_recovers_after_cool_down():
    clock = Clock()
    p = policy(clock, breaker_failures=3, breaker_cooldown=30, per_host_rate=0)
    for _ in range(3):
        assert p.try_start("dead")
        p.finish("dead", "timeout", None, None)
    with pytest.raises(HostDown):
        p.wait_time("dead")
    assert not p.try_start("dead")
    clock.now += 30
    assert p.try_start("dead")  # one probe after the cool-down
    assert not p.try_start("dead")  # and only one
    p.finish("dead", None, 200, None)  # it answered: closed again
    assert p.try_start("dead") and p.try_start("dead")
    assert p.breaker_trips("dead") == 1


def test_a_failed_probe_opens_the_breaker_again():
    clock = Clock()
    p = policy(clock, breaker_failures=2, breaker_cooldown=10, per_host_rate=0)
    for _ in range(2):
        p.try_start("dead")
        p.finish("dead", "connection_error", None, None)
    clock.now += 10
    assert p.try_start("dead")
    p.finish("dead", "timeout", None, None)
    with pytest.raises(HostDown):
        p.wait_time("dead")


def test_an_http_error_is_an_answer_not_a_dead_host():
    clock = Clock()
    p = policy(clock, breaker_failures=2, per_host_rate=0)
    for reason in ("timeout", "http_404", "timeout"):
        p.try_start("a")
        p.finish("a", reason, 404 if reason == "http_404" else None, None)
    assert p.wait_time("a") == 0.0


# ---------------------------------------------------------------- scheduler


def sample(i: int, host: str) -> Sample:
    return Sample(key=f"{i:05d}", shard_id=0, url=f"http://{host}/{i}.jpg")


class FakeWeb:
    """Answers per host: 'ok', 'dead' (timeout), or 'throttle' (429 above `limit` concurrent requests)."""

    def __init__(self, policy: HostPolicy, kinds: dict[str, str], limit: int = 2, seconds: float = 0.01):
        self.policy, self.kinds, self.limit, self.seconds = policy, kinds, limit, seconds
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.lock = threading.Lock()

    def fetch(self, s: Sample):
        host = host_of(s.url)
        with self.lock:
            self.requests[host] = self.requests.get(host, 0) + 1
            self.in_flight[host] = self.in_flight.get(host, 0) + 1
            self.peak[host] = max(self.peak.get(host, 0), self.in_flight[host])
            over = self.in_flight[host] > self.limit
        time.sleep(self.seconds)
        with self.lock:
            self.in_flight[host] -= 1
        kind = self.kinds[host]
        if kind == "dead":
            self.policy.finish(host, "timeout", None, None)
            return s.reject("download", "timeout")
        if kind == "throttle" and over:
            self.policy.finish(host, "http_429", 429, "0")
            return s.reject("download", "http_429")
        self.policy.finish(host, None, 200, None)
        return s


def run_scheduler(kinds, rows, **params):
    p = HostPolicy(PolitenessParams(**params))
    web = FakeWeb(p, kinds)
    with ThreadPoolExecutor(16) as pool:
        scheduler = HostScheduler(p, pool, web.fetch, max_in_flight=16, throttle_retries=5, deadline=30)
        results = list(scheduler.run(rows))
    return results, web, p


def test_scheduler_returns_every_row_once_and_spares_the_dead_host():
    rows = [sample(i, "dead") for i in range(50)] + [sample(100 + i, "ok") for i in range(50)]
    results, web, p = run_scheduler({"dead": "dead", "ok": "ok"}, rows, breaker_failures=3, per_host_rate=0,
                                    per_host_connections=4)
    assert sorted(r.key for r in results) == sorted(s.key for s in rows)
    reasons = {}
    for r in results:
        reasons[getattr(r, "reason", "kept")] = reasons.get(getattr(r, "reason", "kept"), 0) + 1
    assert reasons["kept"] == 50
    assert web.requests["dead"] <= 3 + 4  # the streak, plus what was already in flight
    assert reasons["host_unavailable"] == 50 - web.requests["dead"]


def test_scheduler_keeps_to_the_connection_cap_and_retries_throttled_rows():
    rows = [sample(i, "busy") for i in range(40)]
    results, web, _ = run_scheduler({"busy": "throttle"}, rows, per_host_connections=2, per_host_rate=0)
    assert web.peak["busy"] <= 2
    assert all(isinstance(r, Sample) for r in results) and len(results) == 40


def test_throttled_rows_get_their_final_reason_when_retries_run_out():
    clock_rows = [sample(i, "busy") for i in range(10)]
    p = HostPolicy(PolitenessParams(per_host_rate=0, min_host_rate=1000))  # no slowing down: a quick test

    def always_429(s):
        p.finish("busy", "http_429", 429, "0")
        return s.reject("download", "http_429")

    with ThreadPoolExecutor(4) as pool:
        results = list(HostScheduler(p, pool, always_429, 4, throttle_retries=2, deadline=30).run(clock_rows))
    assert len(results) == 10 and {r.reason for r in results} == {"http_429"}


def test_a_retry_after_beyond_the_deadline_rejects_as_host_backoff_exceeded():
    p = HostPolicy(PolitenessParams(per_host_rate=0, max_host_backoff=3600))

    def long_pause(s):
        p.finish("slow", "http_503", 503, "600")
        return s.reject("download", "http_503")

    with ThreadPoolExecutor(2) as pool:
        results = list(HostScheduler(p, pool, long_pause, 2, throttle_retries=5, deadline=60).run([sample(1, "slow")]))
    assert [r.reason for r in results] == ["host_backoff_exceeded"]


def test_host_of():
    assert host_of("http://Example.COM/x") == "example.com"
    assert host_of("http://Example.COM:8080/x") == "example.com:8080"  # another server on the same name
    assert host_of("not a url") == ""
    assert host_of("http://[::1/") == ""


def test_failed_attempts_count_toward_the_breaker_and_stop_retries_once_it_trips():
    clock = Clock()
    p = policy(clock, breaker_failures=3, per_host_rate=0)
    assert p.try_start("dead")
    assert p.may_retry("dead", "timeout") and p.may_retry("dead", "timeout")
    assert not p.may_retry("dead", "timeout")  # the third failed attempt trips it: no more retries
    p.finish("dead", "timeout", None, None)
    with pytest.raises(HostDown):
        p.wait_time("dead")
    assert p.breaker_trips("dead") == 1
    assert p.may_retry("busy", "http_500")  # an answer is not a dead host


def test_freed_slots_go_round_robin_over_the_hosts():
    """One slot at a time: the hosts take turns, not one host's rows first (they would end up alone,
    held to their host's connection cap, at the end of the task)."""
    p = HostPolicy(PolitenessParams(per_host_rate=0))
    order = []

    def fetch(s):
        order.append(host_of(s.url))
        return s

    rows = [sample(i, "a") for i in range(4)] + [sample(10 + i, "b") for i in range(4)]
    with ThreadPoolExecutor(1) as pool:
        list(HostScheduler(p, pool, fetch, 1, throttle_retries=0, deadline=30).run(rows))
    assert order == ["a", "b"] * 4


def test_a_full_scheduler_does_not_look_at_every_host_for_every_row():
    """With every slot taken only a finishing row lets another start: the hosts' waits are not asked after
    each row (that cost O(hosts) per row: ~1.5 ms a row for a task of 1,000 hosts)."""
    p = HostPolicy(PolitenessParams(per_host_rate=0))
    looks = []
    real_wait_time = p.wait_time

    def counted_wait_time(host):
        looks.append(host)
        return real_wait_time(host)

    p.wait_time = counted_wait_time
    hosts = [f"h{i}" for i in range(200)]
    rows = [sample(i, hosts[i % len(hosts)]) for i in range(400)]

    def fetch(s):
        time.sleep(0.001)
        return s

    with ThreadPoolExecutor(4) as pool:
        results = list(HostScheduler(p, pool, fetch, 4, throttle_retries=0, deadline=30).run(rows))
    assert len(results) == len(rows)
    # Each start asks its own host once (is it down?); a scan of every host per row would be 400 x 200.
    assert len(looks) < 4 * len(rows)
