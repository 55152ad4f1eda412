"""Hostile name patterns and counts: refused with a short ``SpecError`` (library) or a short
4xx (``POST /jobs``) before anything is expanded at size, and error messages echo only a
little of what the caller sent.  The longest name allowed is checked against the QEMU driver
of the suite's libvirtd."""

from __future__ import annotations

import uuid

import pytest

import aiovirt
from aiovirt.errors import LibvirtError
from aiovirt.provision import GuestSpec, Provisioning, SpecError
from aiovirt.provision.spec import MAX_COUNT, MAX_NAME_BYTES
from aiovirt.service import create_app
from tests.test_service import serving

GUEST = ("<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
         "<os><type>hvm</type></os></domain>")
SHORT = 400        # characters a refusal may take (library message)
SMALL = 1000       # bytes a refusal may take (HTTP response body)
HUGE = 200_000     # characters of junk a hostile caller sends in one field

HOSTILE = [        # (pattern, what the refusal names)
    ("{n:>100000000}", "width 100000000"),
    ("{n:x>10000000}", "width 10000000"),
    ("web-{n:0300d}", "width 300"),
    ("{name:.100000}", "precision 100000"),
    ("{0}", "unknown field {0}"),
    ("{}", "unknown field {}"),
    ("{n.__class__}", "unknown field {n.__class__}"),
    ("{n[0]}", "unknown field {n[0]}"),
    ("{n!r}", "conversions are not supported"),
    ("{other}", "unknown field {other}"),
    ("{n:{i}}", "format spec '{i}' of {n} is not supported"),
    ("{n:s}", "format spec 's' of {n} is not supported"),
    ("{n:e}", "format spec 'e' of {n} is not supported"),
    ("web-{n", "expected '}' before end of string"),
    ("web-n}", "Single '}' encountered"),
    ("{" + "x" * 1000 + "}", "unknown field {xxxxxxxx"),
    ("{n}" + "x" * HUGE, f"too long ({HUGE + 3} characters"),
]


@pytest.mark.parametrize("pattern, named", HOSTILE, ids=[p[:20] for p, _ in HOSTILE])
def test_library_refuses_hostile_patterns_with_a_short_spec_error(pattern, named):
    with pytest.raises(SpecError) as caught:
        GuestSpec(GUEST.format(name="web"), count=5, name=pattern).names()
    message = str(caught.value)
    assert named in message and "name pattern" in message
    assert len(message) < SHORT, message[:SHORT]


def test_patterns_that_stay_within_a_name_still_work():
    spec = GuestSpec(GUEST.format(name="web"), count=3, name="{name}-{n:03d}-{i:x}-{n:x>4}")
    assert spec.names() == ["web-001-0-xxx1", "web-002-1-xxx2", "web-003-2-xxx3"]
    widest = GuestSpec(GUEST.format(name="web"), count=2, name=f"{{n:x>{MAX_NAME_BYTES}}}")
    assert [len(n) for n in widest.names()] == [MAX_NAME_BYTES] * 2
    accented = "é{n:x>%d}" % (MAX_NAME_BYTES - 2)          # é is two bytes in UTF-8
    assert len(GuestSpec(GUEST.format(name="w"), count=2, name=accented).names()[0]
               .encode()) == MAX_NAME_BYTES


@pytest.mark.parametrize("kwargs, named", [
    ({"name": "a{n:x>%d}" % MAX_NAME_BYTES}, f"is {MAX_NAME_BYTES + 1} bytes"),
    ({"name": "éé{n:x>%d}" % (MAX_NAME_BYTES - 3)}, f"is {MAX_NAME_BYTES + 1} bytes"),
    ({"name": "{n:.5}"}, "Precision not allowed"),
    ({"template": GUEST.format(name="w" * HUGE)}, f"is {HUGE + 2} bytes"),   # {name}-{n}
])
def test_the_spec_is_named_when_a_name_comes_out_wrong(kwargs, named):
    good = GuestSpec(GUEST.format(name="fine"))
    bad = GuestSpec(**{"template": GUEST.format(name="w"), "count": 2, **kwargs})
    with pytest.raises(SpecError) as caught:
        Provisioning("test:///default", [good, bad])
    assert caught.value.index == 1 and str(caught.value).startswith("spec 1: ")
    assert named in str(caught.value) and len(str(caught.value)) < SHORT


@pytest.mark.parametrize("count", [MAX_COUNT + 1, 10**12, 10**5000],
                         ids=["max+1", "10^12", "10^5000"])
def test_a_huge_count_is_refused_before_any_name_is_made(count):
    with pytest.raises(SpecError, match=f"at most {MAX_COUNT} guests per spec") as caught:
        GuestSpec(GUEST.format(name="web"), count=count)
    assert len(str(caught.value)) < SHORT


async def test_the_longest_name_is_what_the_qemu_driver_takes(daemon):
    """``MAX_NAME_BYTES`` is measured, not guessed: libvirt's QEMU driver defines a guest
    with a name that long and refuses one a byte longer."""
    stem = f"n{uuid.uuid4().hex[:6]}-"
    xml = ("<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
           "<os><type arch='x86_64'>hvm</type></os></domain>")
    longest = stem + "x" * (MAX_NAME_BYTES - len(stem))
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(xml.format(name=longest))
        try:
            assert dom.name == longest and len(dom.name.encode()) == MAX_NAME_BYTES
        finally:
            await dom.undefine()
        with pytest.raises(LibvirtError):
            await conn.define_xml(xml.format(name=longest + "x"))
        assert longest + "x" not in {d.name for d in await conn.list_domains()}


def job(name: str | None = None, **spec: object) -> dict[str, object]:
    body = {"template": GUEST.format(name="web"), "count": 5, "address": False, **spec}
    if name is not None:
        body["name"] = name
    return {"specs": [body]}


async def test_service_refuses_hostile_jobs_with_small_responses(daemon, tmp_path):
    uri = daemon.uri("test", "/default")
    cases = [(job(pattern), named) for pattern, named in HOSTILE] + [
        (job(count=10**12), f"at most {MAX_COUNT} guests per spec"),
        (job(count=MAX_COUNT + 1), f"at most {MAX_COUNT} guests per spec"),
        (job(template=GUEST.format(name="w" * HUGE), count=2), f"is {HUGE + 2} bytes"),
        (job(params={"k": ["v"] * HUGE}), "params and labels map names to strings"),
        ({**job("web-{n}"), "x" * HUGE: 1}, "unknown field 'xxxx"),
        ({**job("web-{n}"), "rollback": "x" * HUGE}, "rollback: expected true or false"),
        ({**job("web-{n}"), "start_timeout": [0] * HUGE}, "start_timeout: expected seconds"),
    ]
    app = create_app(hosts=[uri], profiles_dir=tmp_path / "profiles", system_profiles=False)
    async with serving(app) as client:
        for body, named in cases:
            reply = await client.post("/jobs", json=body)
            shown = reply.text[:200]
            assert reply.status_code == 422, shown
            assert len(reply.content) < SMALL, (len(reply.content), shown)
            assert named in reply.json()["error"], shown
            assert reply.json()["error"].startswith(("specs[0]: ", "request body: ",
                                                     "rollback: ", "start_timeout: ")), shown
        assert (await client.get("/jobs")).json() == {"jobs": []}
        assert (await client.get("/health")).status_code == 200     # and it serves on
