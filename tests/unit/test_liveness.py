"""Which loop is stale, by a fake monotonic clock (`/healthz`'s verdict)."""

from __future__ import annotations

from miniflow.scheduler import liveness


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_is_stale_once_silent_past_its_period_and_the_stall_limit() -> None:
    clock = Clock()
    live = liveness.Liveness(stall_after=10.0, clock=clock)
    live.expect(liveness.ROUND, 30.0)
    live.expect(liveness.SANITY, 5.0)
    clock.now = 15.0
    assert live.stale() == []
    clock.now = 15.5
    assert [s.name for s in live.stale()] == [liveness.SANITY]
    live.beat(liveness.SANITY)
    assert live.stale() == []
    live.enter(liveness.PARSE)
    clock.now = 56.0
    found = {s.name: s for s in live.stale({"kube watch ns": (50.0, 360.0)})}
    assert set(found) == {liveness.ROUND, liveness.SANITY}
    assert found[liveness.ROUND].describe() == (
        "scheduling round: no progress for 56s (due every 30s, in parse)"
    )
    assert found[liveness.SANITY].doing is None  # only the round says where it hangs


def test_a_failed_round_excuses_the_phases_it_did_not_reach() -> None:
    clock = Clock()
    live = liveness.Liveness(stall_after=1.0, clock=clock)
    live.expect(liveness.SANITY, 5.0)
    live.expect(liveness.HEARTBEAT, 5.0)
    clock.now = 100.0
    assert len(live.stale()) == 2
    live.excuse()
    assert live.stale() == []


def test_a_launcher_loop_is_judged_on_its_own_period() -> None:
    clock = Clock()
    live = liveness.Liveness(stall_after=10.0, clock=clock)
    clock.now = 1000.0
    assert live.stale({"kube watch default": (700.0, 360.0)}) == []
    (stale,) = live.stale({"kube watch default": (600.0, 360.0)})
    assert stale.describe() == "kube watch default: no progress for 400s (due every 360s)"
