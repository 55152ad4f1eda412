"""The provisioning planner alone: facts in, actions and outcomes out, no I/O at all.

Each case the real-daemon tests can reach only by killing daemons (host loss mid-call,
re-placement, on_existing, overcommit, cancellation) is a plain call sequence here.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiovirt.provision.plan import Action, Launch, Plan, RollBack, Size, Start
from aiovirt.provision.report import GuestResult, Stage
from aiovirt.provision.spec import Guest, ProvisionError

MIB = 1024
GIB = 1024 * MIB
URIS = ["test:///a", "test:///b", "test:///c"]


def make(n: int, hosts: int = 2, *, start: bool = True, **options) -> Plan:
    """A plan for ``n`` guests of one spec over ``hosts`` hosts."""
    return Plan([Guest(f"g{i}", 0) for i in range(n)], URIS[:hosts], start=[start], **options)


def ready(plan: Plan, host: int, *, free: int = 8 * GIB, cpus: int = 4, names=(),
          size: Size | str = Size(GIB, 1), concurrency: int = 5) -> list[Action]:
    return plan.host_ready(host, free_kib=free, cpus=cpus, names=names, sizes={0: size},
                           concurrency=concurrency)


def launches(actions: list[Action]) -> list[tuple[int, int]]:
    return [(a.guest, a.host) for a in actions if isinstance(a, Launch)]


def start_all(plan: Plan, guest: int) -> list[Action]:
    """Take a launched guest through define and start; returns what completing it set off."""
    plan.defining(guest)
    assert plan.defined(guest, f"uuid-{guest}") == [Start(guest)]
    plan.starting(guest)
    plan.start_returned(guest)
    return plan.started(guest)


# -- placement and capacity ------------------------------------------------------------------
def test_nothing_is_placed_until_every_host_has_arrived():
    plan = make(2)
    assert ready(plan, 0) == [] and not plan.placed
    assert launches(ready(plan, 1)) == [(0, 0), (1, 1)]   # capacity: equal, then fewer vCPUs


def test_capacity_places_on_the_most_free_memory_then_fewest_vcpus_per_cpu():
    plan = make(3)
    ready(plan, 0, free=4 * GIB)
    got = launches(ready(plan, 1, free=2 * GIB))
    # 4 GiB vs 2: a; 3 vs 2: a; 2 vs 2: a has 2 vCPUs placed already, b none
    assert got == [(0, 0), (1, 0), (2, 1)]
    assert plan.capacity(0).free_kib == 2 * GIB and plan.capacity(1).free_kib == GIB


@pytest.mark.parametrize(("placement", "hosts"), [("spread", [0, 1, 0, 1]),
                                                  ("pack", [0, 0, 0, 0])])
def test_spread_alternates_and_pack_fills_the_first_host(placement, hosts):
    plan = make(4, placement=placement)
    ready(plan, 0)
    assert [h for _, h in launches(ready(plan, 1))] == hosts


def test_a_guest_no_host_has_room_for_fails_at_place_naming_the_most_free():
    plan = make(3, hosts=1)
    assert launches(ready(plan, 0, free=2 * GIB)) == [(0, 0), (1, 0)]
    results = plan.results
    assert [r.stage for r in results] == [Stage.PENDING, Stage.PENDING, Stage.FAILED]
    assert results[2].failed_at == "place" and "no host has 1024 MiB free" in results[2].error
    assert plan.capacity(0).free_kib == 0


@pytest.mark.parametrize(("overcommit", "placed"), [(1.0, 1), (2.0, 2), (3.0, 3), (0.5, 0)])
def test_overcommit_scales_the_free_memory_placement_may_use(overcommit, placed):
    plan = make(3, hosts=1, overcommit=overcommit)
    got = launches(ready(plan, 0, free=GIB))
    assert len(got) == placed
    assert sum(r.stage is Stage.FAILED and r.failed_at == "place" for r in plan.results) \
        == 3 - placed
    assert plan.capacity(0).free_kib == int(GIB * overcommit) - placed * GIB >= 0
    assert plan.report.hosts[0].free_memory_kib == GIB      # what the host said, unscaled


def test_a_spec_that_composes_nowhere_fails_at_compose_with_the_reasons():
    plan = make(2)
    ready(plan, 0, size="ComposeError: no such profile")
    assert ready(plan, 1, size="ComposeError: no such profile") == []
    assert all(r.failed_at == "compose" and "no such profile" in r.error and
               r.exists is False for r in plan.results)
    assert plan.done


# -- per-host concurrency --------------------------------------------------------------------
def test_at_most_concurrency_guests_are_in_progress_per_host_and_the_next_follows():
    plan = make(5, hosts=1)
    assert launches(ready(plan, 0, concurrency=2)) == [(0, 0), (1, 0)]
    assert plan.queued(0) == (2, 3, 4)
    assert launches(start_all(plan, 1)) == [(2, 0)]
    plan.defining(0)
    assert launches(plan.failed(0, "refused")) == [(3, 0)]
    assert plan.running(0) == {2, 3} and plan.queued(0) == (4,)


# -- on_existing -----------------------------------------------------------------------------
def test_on_existing_fail_fails_the_guest_and_says_it_exists_elsewhere_than_ours():
    plan = make(2, on_existing="fail")
    ready(plan, 0)
    assert launches(ready(plan, 1, names={"g1"})) == [(0, 0)]
    result = plan.results[1]
    assert (result.stage, result.failed_at, result.host) == (Stage.FAILED, "define", URIS[1])
    assert "already exists" in result.error and result.exists is False


def test_on_existing_skip_skips_the_guest_which_exists():
    plan = make(2, on_existing="skip")
    ready(plan, 0, names={"g0"})
    assert launches(ready(plan, 1)) == [(1, 0)]         # most room left after none taken
    assert plan.results[0].stage is Stage.SKIPPED and plan.results[0].exists is True
    assert plan.results[0].final and plan.report.counts()["skipped"] == 1


def test_on_existing_replace_launches_it_where_it_is_and_records_the_replacement():
    plan = make(1, on_existing="replace")
    ready(plan, 0, free=2 * GIB)
    actions = ready(plan, 1, free=64 * GIB, names={"g0"})   # more room elsewhere: stays
    assert actions == [Launch(0, 1, replace=True)]
    plan.replaced(0)
    assert plan.results[0].replaced
    assert launches(start_all(plan, 0)) == [] and plan.results[0].stage is Stage.STARTED


def test_a_run_that_ends_between_replace_and_define_reports_the_replacement():
    """Found by the property below: the namesake was undefined, then the run ended before
    the guest's define.  Not "cancelled" (that says nothing happened): failed at define,
    not existing, with the replacement on record."""
    plan = make(1, hosts=1, on_existing="replace")
    assert ready(plan, 0, names={"g0"}, concurrency=1) == [Launch(0, 0, replace=True)]
    plan.replaced(0)
    plan.cancel()
    plan.finish()
    [result] = plan.results
    assert (result.stage, result.failed_at, result.exists, result.replaced) == \
        (Stage.FAILED, "define", False, True)
    assert "namesake was replaced" in result.error


def test_on_existing_replace_refuses_a_guest_aiovirt_did_not_make():
    plan = make(2, hosts=1, on_existing="replace")
    assert ready(plan, 0, names={"g0"}, concurrency=1) == [Launch(0, 0, replace=True)]
    assert plan.not_ours(0) == [Launch(1, 0)]      # its slot goes to the next guest
    result = plan.results[0]
    assert result.stage is Stage.FAILED and result.failed_at == "define"
    assert "aiovirt did not make it" in result.error and not result.replaced


# -- host loss -------------------------------------------------------------------------------
def test_a_lost_host_fails_what_was_out_and_moves_what_waited_to_the_survivor():
    plan = make(4, placement="pack")
    ready(plan, 0, concurrency=2)
    assert launches(ready(plan, 1)) == [(0, 0), (1, 0)]     # 2 and 3 wait on host 0
    plan.defining(0)                                        # a define out: unknown
    plan.defining(1)
    plan.defined(1, "u1")
    plan.starting(1)                                        # a start out: it exists
    before = plan.capacity(0).free_kib
    moved = plan.host_lost(0, "ConnectionClosed: keepalive timed out")
    assert launches(moved) == [(2, 1), (3, 1)]
    assert plan.capacity(0).free_kib == before + 2 * GIB    # given back
    out = plan.results
    assert (out[0].stage, out[0].failed_at, out[0].exists) == (Stage.FAILED, "define", None)
    assert (out[1].stage, out[1].failed_at, out[1].exists) == (Stage.FAILED, "start", True)
    assert all("lost" in out[i].error and "keepalive" in out[i].error for i in (0, 1))
    assert [out[i].moved_from for i in (2, 3)] == [[URIS[0]], [URIS[0]]]
    assert all(out[i].host == URIS[1] for i in (2, 3))
    assert plan.report.hosts[0].state == "lost"
    assert any("moved" in note and f"2 to {URIS[1]}" in note for note in plan.report.notes)


def test_late_facts_from_a_lost_host_change_nothing():
    plan = make(1, hosts=1)
    ready(plan, 0)
    plan.defining(0)
    plan.host_lost(0, "gone")
    assert plan.defined(0, "u") == [] and plan.started(0) == []
    assert plan.results[0].stage is Stage.FAILED and plan.results[0].uuid is None


def test_guests_of_a_lost_host_with_no_survivor_fail_at_place():
    plan = make(3, hosts=1)
    ready(plan, 0, concurrency=1)
    plan.host_lost(0, "gone")
    assert [r.failed_at for r in plan.results] == ["define", "place", "place"]
    assert all("no host is left" in r.error for r in plan.results[1:]) and plan.done


def test_no_reachable_host_fails_every_guest_and_an_unreachable_one_is_passed_over():
    plan = make(2)
    plan.host_unreachable(0, "ConnectionFailed: refused")
    assert plan.host_unreachable(1, "ConnectionFailed: refused") == []
    assert all(r.error == "no host could be reached" for r in plan.results) and plan.done
    other = make(2)
    other.host_unreachable(0, "ConnectionFailed: refused")
    assert launches(ready(other, 1)) == [(0, 1), (1, 1)]
    assert other.report.hosts[0].state == "unreachable"
    assert any("unreachable" in note for note in other.report.notes)


def test_a_host_lost_before_it_was_ready_counts_as_unreachable():
    plan = make(1)
    plan.host_lost(0, "stream ended")
    assert ready(plan, 0) == []                     # too late: it is out
    assert launches(ready(plan, 1)) == [(0, 1)]
    assert plan.report.hosts[0].state == "unreachable"


# -- starting, timeouts, rollback ------------------------------------------------------------
def test_a_spec_that_does_not_start_is_done_once_defined():
    plan = make(1, hosts=1, start=False)
    ready(plan, 0)
    plan.defining(0)
    assert plan.defined(0, "u") == []
    assert plan.results[0].stage is Stage.DEFINED and plan.results[0].final and plan.done


@pytest.mark.parametrize("undone", [None, "NoSuchDomain: gone"])
def test_a_start_timeout_rolls_back_then_fails_at_event(undone):
    plan = make(1, hosts=1)
    ready(plan, 0)
    plan.defining(0)
    plan.defined(0, "u")
    plan.starting(0)
    plan.start_returned(0)
    assert plan.timed_out(0, 0.5) == [RollBack(0)]
    assert not plan.results[0].final                    # rolling back: not over yet
    plan.rolled_back(0, undone)
    result = plan.results[0]
    assert result.stage is Stage.FAILED and result.failed_at == "event"
    assert "no STARTED event came within 0.5 s" in result.error
    assert (result.exists, result.rolled_back) == ((False, True) if undone is None
                                                   else (True, False))
    assert ("rolling back failed too" in result.error) is (undone is not None)


def test_without_rollback_a_refused_start_fails_at_once_and_exists():
    plan = make(1, hosts=1, rollback=False)
    ready(plan, 0)
    plan.defining(0)
    plan.defined(0, "u")
    plan.starting(0)
    assert plan.failed(0, "no such emulator") == []
    result = plan.results[0]
    assert (result.failed_at, result.exists, result.error) == ("start", True,
                                                               "no such emulator")


@pytest.mark.parametrize(("certain", "exists"), [(True, False), (False, None)])
def test_a_failed_define_exists_only_if_its_reply_was_not_understood(certain, exists):
    plan = make(1, hosts=1)
    ready(plan, 0)
    plan.defining(0)
    plan.failed(0, "boom", certain=certain)
    assert plan.results[0].failed_at == "define" and plan.results[0].exists is exists


def test_a_start_reply_not_understood_is_not_rolled_back():
    plan = make(1, hosts=1)
    ready(plan, 0)
    plan.defining(0)
    plan.defined(0, "u")
    plan.starting(0)
    assert plan.failed(0, "ProtocolError: bad", certain=False) == []
    assert plan.results[0].exists is True and plan.results[0].failed_at == "start"


# -- cancellation ----------------------------------------------------------------------------
def test_cancel_launches_nothing_more_and_finish_gives_every_guest_its_outcome():
    plan = make(5, hosts=1)
    ready(plan, 0, concurrency=3)
    plan.defining(1)
    plan.defined(1, "u1")
    plan.starting(1)
    plan.start_returned(1)                          # its start returned, no event yet
    plan.defining(0)
    plan.cancel()
    assert plan.defined(0, "u0") == []              # not started: defined it stays
    plan.defining(2)                                # define out (shielded) when it ended
    plan.finish()
    stages = [r.stage for r in plan.results]
    assert stages == [Stage.DEFINED, Stage.STARTED, Stage.FAILED, Stage.CANCELLED,
                      Stage.CANCELLED]
    assert plan.results[2].error == "the run was cancelled here"
    assert plan.report.cancelled and plan.done and not plan.report.ok


def test_cancel_before_placement_places_nothing():
    plan = make(2)
    plan.cancel()
    ready(plan, 0)
    assert ready(plan, 1) == [] and not plan.placed
    plan.finish()
    assert plan.report.counts() == {"cancelled": 2}


def test_a_finished_guest_frees_no_slot_for_the_queue_once_cancelled():
    plan = make(3, hosts=1)
    ready(plan, 0, concurrency=1)
    plan.cancel()
    plan.defining(0)
    assert plan.defined(0, "u") == []
    assert plan.queued(0) == (1, 2)


def test_invalid_options_are_refused():
    with pytest.raises(ProvisionError, match="placement"):
        make(1, placement="random")
    with pytest.raises(ProvisionError, match="on_existing"):
        make(1, on_existing="merge")
    with pytest.raises(ProvisionError, match="overcommit"):
        make(1, overcommit=0)


# -- laws over any sequence of facts ---------------------------------------------------------
@settings(max_examples=int(os.environ.get("AIOVIRT_PLAN_EXAMPLES", "300")), deadline=None)
@given(st.data())
def test_any_sequence_of_facts_keeps_the_plans_laws(data):
    """Whatever hosts do and guests report, in any order: every guest ends with exactly one
    outcome, the counts add up, no guest is launched on a host that is not up, no host has
    more guests in progress than its concurrency, and capacity is exactly the free memory
    less what is placed there (never below zero unless guests replace namesakes)."""
    n = data.draw(st.integers(1, 10), label="guests")
    hosts = data.draw(st.integers(1, 3), label="hosts")
    on_existing = data.draw(st.sampled_from(["fail", "skip", "replace"]))
    overcommit = data.draw(st.sampled_from([0.5, 1.0, 2.0]))
    finals: dict[str, Stage] = {}

    def changed(result: GuestResult) -> None:
        if result.final:
            assert result.name not in finals, f"{result.name} ended twice"
            finals[result.name] = result.stage

    plan = Plan([Guest(f"g{i}", 0) for i in range(n)], URIS[:hosts],
                start=[data.draw(st.booleans(), label="start")],
                placement=data.draw(st.sampled_from(["capacity", "spread", "pack"])),
                on_existing=on_existing, rollback=data.draw(st.booleans(), label="rollback"),
                overcommit=overcommit, on_change=changed)
    size = Size(GIB, 1)
    free = {h: data.draw(st.integers(0, 6), label=f"free GiB {h}") * GIB
            for h in range(hosts)}
    concurrency = {h: data.draw(st.integers(1, 3), label=f"conc {h}") for h in range(hosts)}
    step: dict[int, str] = {}          # launched guest -> the next thing the runner does
    up: set[int] = set()
    cancelled = False

    def take(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Launch):
                assert action.host in up, "launched on a host that is not up"
                assert not cancelled, "launched after cancel"
                assert action.guest not in step
                step[action.guest] = "replace" if action.replace else "define"
            elif isinstance(action, Start):
                assert not cancelled
                step[action.guest] = "start"
            else:
                step[action.guest] = "rollback"

    for _ in range(data.draw(st.integers(0, 60), label="facts")):
        waiting = [h for h in range(hosts) if not plan.arrived(h)]
        live = [g for g in step if not plan.results[g].final]
        kinds = ["arrive"] * bool(waiting) + ["guest"] * bool(live) + ["lose", "cancel"]
        kind = data.draw(st.sampled_from(kinds))
        if kind == "arrive":
            h = data.draw(st.sampled_from(waiting))
            if data.draw(st.booleans()):
                names = data.draw(st.sets(st.sampled_from([f"g{i}" for i in range(n)])))
                up.add(h)
                take(plan.host_ready(h, free_kib=free[h], cpus=2, names=names,
                                     sizes={0: size}, concurrency=concurrency[h]))
            else:
                take(plan.host_unreachable(h, "refused"))
        elif kind == "lose":
            h = data.draw(st.integers(0, hosts - 1))
            up.discard(h)
            take(plan.host_lost(h, "gone"))
        elif kind == "cancel":
            cancelled = True
            take(plan.cancel())
        else:
            g = data.draw(st.sampled_from(live))
            at, ok = step.pop(g), data.draw(st.booleans())
            if at == "replace":
                take(plan.replaced(g) if ok else plan.not_ours(g))
                if ok:
                    step[g] = "define"
            elif at == "define":
                take(plan.defining(g))
                take(plan.defined(g, f"u{g}") if ok else
                     plan.failed(g, "no", certain=data.draw(st.booleans())))
            elif at == "start":
                take(plan.starting(g))
                if ok:
                    take(plan.start_returned(g))
                    take(plan.started(g) if data.draw(st.booleans()) else plan.timed_out(g, 1))
                else:
                    take(plan.failed(g, "no", certain=data.draw(st.booleans())))
            else:
                take(plan.rolled_back(g, None if ok else "no"))
        for h in range(hosts):
            assert len(plan.running(h)) <= concurrency[h]
            if plan.running(h) or plan.queued(h):
                assert h in up
            capacity = plan.capacity(h)
            if capacity is not None:
                placed = sum(plan.host_of(g) == h for g in range(n))
                assert capacity.free_kib == int(free[h] * overcommit) - placed * GIB
                if on_existing != "replace":
                    assert capacity.free_kib >= 0
        assert sum(plan.progress.counts.values()) == n
        assert plan.progress.done == len(finals) == sum(r.final for r in plan.results)
    plan.finish()
    assert len(finals) == n and all(r.final for r in plan.results) and plan.done
    assert {r.name: r.stage for r in plan.results} == finals     # nothing moved after
    assert sum(plan.report.counts().values()) == n
    for r in plan.results:
        if r.stage is Stage.CANCELLED:      # never got as far as a define
            assert r.uuid is None and r.exists is False and not r.replaced




def test_a_run_that_ends_with_a_define_out_says_the_guest_may_exist():
    # finish() reported it absent (a teardown by report then left it behind)
    plan = Plan([Guest("g1", 0)], ["test:///a"], start=[True])
    plan.host_ready(0, free_kib=1 << 20, cpus=2, names=(), sizes={0: Size(1024)},
                    concurrency=1)
    plan.defining(0)
    plan.cancel()
    plan.finish()   # ... before the define's reply
    result = plan.results[0]
    assert result.stage is Stage.FAILED and result.exists is None


def test_a_host_still_connecting_when_the_run_ends_is_not_reported_ok():
    plan = Plan([Guest("g1", 0)], ["test:///a", "test:///b"], start=[True])
    plan.host_ready(0, free_kib=1 << 20, cpus=2, names=(), sizes={0: Size(1024)},
                    concurrency=1)
    plan.cancel()
    plan.finish()   # host b never answered
    assert [h.state for h in plan.report.hosts] == ["ok", "unreachable"]   # b said "ok"
    assert plan.report.hosts[1].error == "the run ended while connecting to it"


def test_a_progress_line_on_a_broken_stream_goes_quiet_instead_of_failing_the_run():
    import io

    from aiovirt.cli.progress import ProgressLine
    from aiovirt.provision.report import Progress

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    line = ProgressLine(Progress(3), Broken(), force=True)
    line.update()   # used to raise into the run's on_change
    line.close()
    assert not line.enabled
