"""The REST service over real HTTP: uvicorn on a free loopback port, httpx as the client, and
the suite's libvirtd behind provisioning jobs, teardown and the event stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from lxml import etree

import aiovirt
from aiovirt.cli import main
from aiovirt.cli.serve import check_bind, is_loopback
from aiovirt.provision import teardown
from aiovirt.service import create_app
from aiovirt.service.events import EventHub
from aiovirt.service.openapi import operations
from aiovirt.service.server import Server, uvicorn_config

XML = {"content-type": "application/xml"}
TOKEN = "s3cret-token-0123456789abcdef"
PARTIAL = "<domain><name>svc-vm</name></domain>"
APP_PROFILE = """<profile name='app-title' version='{version}' priority='40'>
  <description>Sets the title (an application profile).</description>
  <param name='title' default='untitled'>The title.</param>
  <add><title>${{title}}</title></add>
</profile>"""
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<domain><name>&lol3;</name></domain>"""
EXTERNAL_ENTITY = """<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<domain><name>&x;</name></domain>"""
TEST_GUEST = ("<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
              "<os><type>hvm</type></os></domain>")
MANY = 1000   # tiny test-driver guests, one at a time: a run that lasts for a cancel to land
TINY_GUEST = TEST_GUEST.replace("8</memory>", "1</memory>")


@contextlib.asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app`` on uvicorn as ``aiovirt serve`` does (port 0: the kernel picks a free
    one; ``options`` for ``uvicorn_config``) and yield a client."""
    server = Server(uvicorn_config(app, port=0, log_level="warning", **options))
    task = asyncio.ensure_future(server.serve())
    with anyio.fail_after(15):
        while not server.started:
            if task.done():
                task.result()   # startup failed: raise why
                raise AssertionError("uvicorn stopped before it started")
            await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        with anyio.fail_after(30):
            await task


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    return tmp_path / "profiles"


@pytest.fixture
def test_uri(daemon) -> str:
    return daemon.uri("test", "/default")


@pytest.fixture
async def holder(test_uri: str) -> AsyncIterator[aiovirt.Connection]:
    """A connection held open: the shared test host keeps its state while one exists."""
    conn = await aiovirt.connect(test_uri)
    try:
        yield conn
    finally:
        await conn.close()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory`` (hidden ones too) with its content."""
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


async def names_on(conn: aiovirt.Connection) -> set[str]:
    return {d.name for d in await conn.list_domains()}


async def wait_for_job(client: httpx.AsyncClient, job_id: str,
                       seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Read the job until it is no longer running (long-polls of at most 5 s each)."""
    with anyio.fail_after(60):
        while True:
            reply = await client.get(f"/jobs/{job_id}", params={"wait": 5})
            assert reply.status_code == 200, reply.text
            job = reply.json()
            if seen is not None:
                seen.append(job["progress"])
            if job["state"] != "running":
                return job


# -- profiles -----------------------------------------------------------------------------------

async def test_list_and_show_profiles(profiles_dir):
    async with serving(create_app(profiles_dir=profiles_dir, system_profiles=False)) as client:
        listing = (await client.get("/profiles")).json()["profiles"]
        by_name = {p["name"]: p for p in listing}
        assert by_name["kvm-base"]["origin"] == "shipped"
        assert by_name["kvm-base"]["id"] == "kvm-base@1.0"
        assert by_name["q35-hotplug"]["priority"] == 10
        shown = await client.get("/profiles/kvm-base")
        assert shown.status_code == 200
        detail = shown.json()
        assert {p["name"]: p["default"] for p in detail["params"]} == \
            {"memory": "1024", "vcpus": "1"}
        assert detail["actions"] and all("line" in a for a in detail["actions"])
        from aiovirt.compose import Library   # the shipped file's digest: the expected value
        shipped = Library.default(system=False, user=False).get("kvm-base").digest
        assert detail["digest"] == shipped
        by_version = await client.get("/profiles/kvm-base", params={"version": "1.0"})
        assert by_version.json()["digest"] == shipped
        missing = await client.get("/profiles/kvm-bsae")
        assert missing.status_code == 404
        assert "unknown profile 'kvm-bsae'" in missing.json()["error"]
        assert "did you mean kvm-base" in missing.json()["error"]
        no_version = await client.get("/profiles/kvm-base", params={"version": "9"})
        assert no_version.status_code == 404
        assert "has no version '9' (available: 1.0)" in no_version.json()["error"]


async def test_put_and_delete_application_profiles_persist(profiles_dir):
    app = create_app(profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        created = await client.put("/profiles/app-title",
                                   content=APP_PROFILE.format(version="1"), headers=XML)
        assert created.status_code == 201, created.text
        assert created.json()["origin"] == "application"
        assert created.headers["location"] == "/profiles/app-title?version=1"
        # written atomically: the one file, no temporary left behind
        assert list(snapshot(profiles_dir)) == ["app-title@1.xml"]
        assert (profiles_dir / "app-title@1.xml").read_text() == APP_PROFILE.format(version="1")
        # used at once
        composed = await client.post("/compose", params=[("profile", "kvm-base"),
                                                         ("profile", "app-title"),
                                                         ("param", "title=hello")],
                                     content=PARTIAL, headers=XML)
        assert composed.status_code == 200, composed.text
        assert etree.fromstring(composed.json()["xml"].encode()).findtext("title") == "hello"
        again = await client.put("/profiles/app-title", content=APP_PROFILE.format(version="1"),
                                 headers=XML)
        assert again.status_code == 200   # replaced, not created
        newer = await client.put("/profiles/app-title", content=APP_PROFILE.format(version="2"),
                                 headers=XML)
        assert newer.status_code == 201
        shown = (await client.get("/profiles/app-title")).json()
        assert (shown["version"], shown["versions"]) == ("2", ["1", "2"])
    # a new service on the same directory sees them
    async with serving(create_app(profiles_dir=profiles_dir, system_profiles=False)) as client:
        shown = (await client.get("/profiles/app-title")).json()
        assert (shown["version"], shown["origin"]) == ("2", "application")
        mine = (await client.get("/profiles", params={"origin": "application"})).json()
        assert [p["id"] for p in mine["profiles"]] == ["app-title@2"]
        shipped = await client.delete("/profiles/kvm-base")
        assert shipped.status_code == 409
        assert "shipped profile" in shipped.json()["error"]
        assert (await client.delete("/profiles/nosuch")).status_code == 404
        absent = await client.delete("/profiles/app-title", params={"version": "7"})
        assert absent.status_code == 404 and "stored versions: 1, 2" in absent.json()["error"]
        one = await client.delete("/profiles/app-title", params={"version": "1"})
        assert one.json() == {"deleted": ["app-title@1"]}
        assert list(snapshot(profiles_dir)) == ["app-title@2.xml"]
        rest = await client.delete("/profiles/app-title")
        assert rest.json() == {"deleted": ["app-title@2"]}
        assert snapshot(profiles_dir) == {}
        assert (await client.get("/profiles/app-title")).status_code == 404


@pytest.mark.parametrize("body, status, message", [
    ("<profile name='app-x'>\n<add><title>t</title></add>", 400, "profile app-x:2:"),
    (BILLION_LAUGHS.replace("domain", "profile"), 400, "DOCTYPE is not accepted"),
    (EXTERNAL_ENTITY.replace("domain", "profile"), 400, "DOCTYPE is not accepted"),
    ("<profile name='other'><add><title>t</title></add></profile>", 422,
     "the document is profile 'other', but the URL names 'app-x'"),
    ("<profile name='app-x'><bogus/></profile>", 422, "unknown element <bogus>"),
    ("<profile name='app-x'><add><devices><bogus/></devices></add></profile>", 422,
     "<bogus> is not allowed in <devices>"),
    ("<profile name='app-x' extends='nosuch'><add><title>t</title></add></profile>", 422,
     "extends nosuch"),
    ("<profile name='app-x'><add><title>${nope}</title></add></profile>", 422,
     "names no declared <param>"),
    ("<profiles><profile name='app-x'><add><title>a</title></add></profile><profile "
     "name='app-x' version='2'><add><title>b</title></add></profile></profiles>", 422,
     "holds 2 profiles"),
])
async def test_bad_profile_is_refused_and_changes_nothing(profiles_dir, body, status, message):
    async with serving(create_app(profiles_dir=profiles_dir, system_profiles=False)) as client:
        assert (await client.put("/profiles/app-x", content=APP_PROFILE.format(version="1")
                                 .replace("app-title", "app-x"), headers=XML)).status_code == 201
        before = snapshot(profiles_dir)
        listed = (await client.get("/profiles")).json()
        reply = await client.put("/profiles/app-x", content=body, headers=XML)
        assert reply.status_code == status, reply.text
        assert message in reply.json()["error"]
        assert snapshot(profiles_dir) == before
        assert (await client.get("/profiles")).json() == listed


async def test_profile_put_refusals_without_parsing(profiles_dir):
    async with serving(create_app(profiles_dir=profiles_dir, system_profiles=False,
                                  max_body=2048)) as client:
        shipped = await client.put("/profiles/kvm-base", headers=XML, content=APP_PROFILE
                                   .format(version="9").replace("app-title", "kvm-base"))
        assert shipped.status_code == 409
        assert "an application profile cannot take its name" in shipped.json()["error"]
        wrong_type = await client.put("/profiles/app-title", content=APP_PROFILE
                                      .format(version="1"), headers={"content-type":
                                                                     "application/json"})
        assert wrong_type.status_code == 415
        assert "takes application/xml or text/xml" in wrong_type.json()["error"]
        bad_name = await client.put("/profiles/.hidden", content="<profile name='.hidden'/>",
                                    headers=XML)
        assert bad_name.status_code == 422 and "is not a profile name" in bad_name.json()["error"]
        big = "<profile name='app-big'><description>" + "x" * 4096 + "</description>" \
              "<add><title>t</title></add></profile>"
        too_big = await client.put("/profiles/app-big", content=big, headers=XML)
        assert too_big.status_code == 413
        assert snapshot(profiles_dir) == {}


# -- compose and address ------------------------------------------------------------------------

async def test_compose_xml_in_xml_and_explain_out(profiles_dir):
    async with serving(create_app(profiles_dir=profiles_dir, system_profiles=False)) as client:
        reply = await client.post("/compose", params=[("profile", "kvm-base"),
                                                      ("profile", "guest-agent"),
                                                      ("profile", "q35-hotplug"),
                                                      ("param", "count=2")],
                                  content=PARTIAL, headers=XML)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        domain = etree.fromstring(body["xml"].encode())
        assert domain.findtext("name") == "svc-vm"
        assert len(domain.findall("devices/controller[@model='pcie-root-port']")) == 2
        assert "applied q35-hotplug@1.0 (priority 10, requested) count=2" in body["explain"]
        assert {a["profile"] for a in body["applied"]} == \
            {"kvm-base@1.0", "guest-agent@1.0", "q35-hotplug@1.0"}
        # the JSON form, with addressing
        reply = await client.post("/compose", json={
            "domain": PARTIAL, "profiles": ["kvm-base", "virtio-linux"],
            "params": {"memory": 512}, "address": {"hotplug_reserve": 1}})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        domain = etree.fromstring(body["xml"].encode())
        assert domain.find("memory").text == "512"
        assert any(d["kind"] == "controller" and d.get("added") for d in body["devices"])


@pytest.mark.parametrize("kwargs, status, message", [
    ({"content": "<domain>\n<name>x</name>\n<devices>\n</domain>", "headers": XML}, 400,
     "request body:4: "),
    ({"content": BILLION_LAUGHS, "headers": XML}, 400, "DOCTYPE is not accepted"),
    ({"content": EXTERNAL_ENTITY, "headers": XML}, 400, "DOCTYPE is not accepted"),
    ({"json": {"domain": EXTERNAL_ENTITY}}, 400, "domain:1: a DOCTYPE is not accepted"),
    ({"content": PARTIAL, "headers": XML, "params": {"profile": "nosuch"}}, 404,
     "unknown profile 'nosuch'"),
    ({"content": PARTIAL, "headers": XML, "params": {"profile": "nfv-realtime"}}, 422,
     "needs parameter 'vcpu_cpus'"),
    ({"content": PARTIAL, "headers": XML, "params": [("profile", "kvm-base"),
                                                     ("param", "memory=lots")]}, 422,
     "parameter 'memory' must be an integer, not 'lots'"),
    ({"content": PARTIAL, "headers": XML, "params": {"param": "novalue"}}, 422,
     "expected NAME=VALUE"),
    ({"content": PARTIAL, "headers": XML, "params": [("profile", "spice-desktop"),
                                                     ("profile", "headless-serial")]}, 409,
     "conflicts"),
    ({"content": "<network/>", "headers": XML}, 422, "expected a <domain> document"),
    ({"content": "{not json", "headers": {"content-type": "application/json"}}, 400,
     "request body is not JSON: line 1 column 2"),
    ({"content": "[" * 100_000, "headers": {"content-type": "application/json"}}, 400,
     "nested too deeply"),
    ({"json": {"domain": PARTIAL, "profiles": "kvm-base"}}, 422,
     "profiles: expected a list of strings"),
    ({"json": {"domain": PARTIAL, "bogus": 1}}, 422, "unknown field 'bogus'"),
    ({"content": PARTIAL, "headers": {"content-type": "text/plain"}}, 415,
     "takes application/xml or text/xml or application/json (got text/plain)"),
    ({"content": b"<domain><name>\xff</name></domain>", "headers": XML}, 400,
     "not UTF-8"),
])
async def test_compose_errors_are_4xx_naming_what_and_where(profiles_dir, kwargs, status,
                                                            message):
    async with serving(create_app(profiles_dir=profiles_dir, system_profiles=False)) as client:
        reply = await client.post("/compose", **kwargs)
        assert reply.status_code == status, reply.text
        assert reply.headers["content-type"] == "application/json"
        assert message in reply.json()["error"]


async def test_address_domain_and_devices(profiles_dir):
    domain = ("<domain type='kvm'><name>a</name><memory>1</memory><os><type arch='x86_64' "
              "machine='q35'>hvm</type></os><devices><interface type='network'><source "
              "network='default'/><model type='virtio'/></interface></devices></domain>")
    async with serving(create_app(profiles_dir=profiles_dir, system_profiles=False)) as client:
        ports = []
        for reserve in (0, 3):
            reply = await client.post("/address", params={"reserve": reserve}, content=domain,
                                      headers=XML)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            tree = etree.fromstring(body["xml"].encode())
            nic = tree.find("devices/interface/address")
            assert nic is not None and nic.get("type") == "pci"
            used = {int(a.get("bus"), 16) for a in tree.iter("address") if a.get("bus")}
            ports.append(sum(int(c.get("index")) not in used for c in
                             tree.findall("devices/controller[@model='pcie-root-port']")))
            assert any(d["kind"] == "interface" and d["address"]["type"] == "pci"
                       for d in body["devices"])
        assert ports[0] < 3 and ports[1] == 3   # free root ports, kept for hotplug
        reply = await client.post("/address", json={
            "machine": {"arch": "x86_64", "machine": "pc"},
            "devices": [{"kind": "interface", "type": "network", "model": "virtio"}]})
        assert reply.status_code == 200, reply.text
        placed = reply.json()["devices"]
        nic = next(d for d in placed if d["kind"] == "interface")
        assert nic["address"]["type"] == "pci" and nic["address"]["slot"] >= 1
        bad = await client.post("/address", json={"domain": domain,
                                                  "tunables": {"placement": "isa"}})
        assert bad.status_code == 422 and "placement 'isa'" in bad.json()["error"]
        for body in ({"domain": domain, "tunables": {"hotplug_reserve": 10**12}},
                     {"domain": "<domain/>", "address": {"hotplug_reserve": 1025}}):
            path = "/address" if "tunables" in body else "/compose"   # grew memory without end
            bad = await client.post(path, json=body)
            assert bad.status_code == 422, bad.text
            assert "hotplug_reserve must be a whole number from 0 to 1024" in bad.json()["error"]
        bad = await client.post("/jobs", json={"hosts": ["test:///default"], "specs": [
            {"template": TEST_GUEST.format(name="r"), "address": {"hotplug_reserve": 3_000_000}}]})
        assert bad.status_code == 422 and "hotplug_reserve must be" in bad.json()["error"]
        bad = await client.post("/address", json={"devices": [{"model": "virtio"}]})
        assert bad.status_code == 422 and "has no 'kind'" in bad.json()["error"]
        for body, words in [   # each used to be a 500 (AttributeError, IndexError)
                ({"devices": [{"kind": "disk", "target": 5}]}, "devices[0] disk target: "),
                ({"machine": {"machine": "q35"}, "devices": [
                    {"kind": "controller", "type": "pci", "index": -3}]},
                 "devices[0] controller index: expected a whole number from 0 to 1023"),
                ({"machine": {"numa_nodes": "2"}}, "machine numa_nodes: expected"),
                ({"domain": domain, "device_tunables": {"interface#1": {"numa_node": -1}}},
                 "interface#1 numa_node: expected a whole number")]:
            bad = await client.post("/address", json=body)
            assert bad.status_code == 422 and words in bad.json()["error"], bad.text
        bad = await client.post("/address", content=BILLION_LAUGHS, headers=XML)
        assert bad.status_code == 400


# -- limits, routes and security ----------------------------------------------------------------

async def test_oversized_bodies_get_413_and_the_server_goes_on(profiles_dir):
    async with serving(create_app(profiles_dir=profiles_dir, max_body=4096,
                                  system_profiles=False)) as client:
        declared = await client.post("/compose", content="x" * 5000, headers=XML)
        assert declared.status_code == 413
        assert "over this server's limit of 4096 bytes" in declared.json()["error"]

        async def chunks() -> AsyncIterator[bytes]:   # no Content-Length: counted as read
            for _ in range(100):
                yield b"<!-- padding padding padding -->" * 10

        streamed = await client.post("/compose", content=chunks(), headers=XML)
        assert streamed.status_code == 413
        assert "more than 4096 bytes" in streamed.json()["error"]
        assert (await client.get("/health")).status_code == 200


async def test_unknown_routes_and_methods(profiles_dir):
    async with serving(create_app(profiles_dir=profiles_dir, system_profiles=False)) as client:
        missing = await client.get("/nowhere")
        assert missing.status_code == 404 and "/openapi.json" in missing.json()["error"]
        wrong = await client.delete("/compose")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        assert (await client.get("/jobs/nosuch")).status_code == 404


async def test_bearer_token(profiles_dir):
    async with serving(create_app(profiles_dir=profiles_dir, token=TOKEN,
                                  system_profiles=False)) as client:
        bare = await client.get("/health")
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in bare.json()["error"]
        wrong = await client.get("/profiles", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "wrong bearer token"
        unauthorised_put = await client.put("/profiles/app-title", headers=XML,
                                            content=APP_PROFILE.format(version="1"))
        assert unauthorised_put.status_code == 401
        assert snapshot(profiles_dir) == {}
        good = await client.get("/health", headers={"authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200 and good.json()["aiovirt"] == aiovirt.__version__


def test_serve_refuses_a_public_address_without_token(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("AIOVIRT_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--profiles-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("aiovirt: error: --host 0.0.0.0: not a loopback address")
    assert "AIOVIRT_TOKEN" in error
    monkeypatch.setenv("AIOVIRT_TOKEN", "short")
    assert main(["serve", "--host", "0.0.0.0", "--profiles-dir", str(tmp_path)]) == 1
    assert "at least 16 visible ASCII characters" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)



def test_serve_refuses_a_profiles_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["serve", "--profiles-dir", str(tmp_path / "file")]) == 1
    assert "is not a directory" in capsys.readouterr().err

async def test_openapi_document_matches_the_routing_table(profiles_dir):
    app = create_app(profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    routed = {(route.method, route.path) for route in app.router.routes}
    assert operations(doc) == routed
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/')[1:]}:
        node = doc
        for key in ref.split("/"):
            node = node[key]   # every $ref resolves
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                assert op["summary"] and {"200", "202"} & set(op["responses"])
                assert "401" in op["responses"], (method, path)


# -- provisioning, teardown and events (the suite's libvirtd) -----------------------------------

async def test_job_provisions_20_guests_then_teardown(profiles_dir, test_uri, holder):
    prefix = f"svc-{uuid.uuid4().hex[:6]}"
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        reply = await client.post("/jobs", json={"specs": [{
            "template": TEST_GUEST.format(name=prefix), "count": 20, "name": prefix + "-{n:02d}",
            "address": False, "labels": {"test": "service"}}], "placement": "spread"})
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        assert reply.headers["location"] == f"/jobs/{job_id}"
        assert reply.json()["guests"] == 20
        seen: list[dict[str, Any]] = []
        job = await wait_for_job(client, job_id, seen)
        assert job["state"] == "done", job
        assert job["progress"] == {"started": 20, "total": 20, "done": 20}
        assert all(p["total"] == 20 for p in seen)
        report = job["report"]
        assert report["ok"] is True and report["counts"] == {"started": 20}
        assert report["run_id"] == job_id
        expected = {f"{prefix}-{n:02d}" for n in range(1, 21)}
        assert {g["name"] for g in report["guests"]} == expected
        # they exist on the daemon, and run
        domains = {d.name: d for d in await holder.list_domains()}
        assert expected <= set(domains)
        assert all([await domains[name].is_active() for name in expected])
        listing = (await client.get("/jobs")).json()["jobs"]
        assert [j["id"] for j in listing] == [job_id]
        # the job's guests go away again
        removed = await client.delete(f"/jobs/{job_id}/guests")
        assert removed.status_code == 200, removed.text
        assert removed.json()["counts"] == {"removed": 20}
        assert not expected & await names_on(holder)
        assert (await client.get(f"/jobs/{job_id}")).json()["teardown"]["ok"] is True
        assert (await client.post(f"/jobs/{job_id}/cancel")).status_code == 409
        # a second teardown finds nothing, and the job's record still says what was removed
        again = (await client.delete(f"/jobs/{job_id}/guests")).json()
        assert again["counts"] == {"not found": 20}
        record = (await client.get(f"/jobs/{job_id}")).json()["teardown"]
        assert record["counts"] == {"removed": 20}


async def test_cancel_a_job(profiles_dir, test_uri, holder):
    prefix = f"cancel-{uuid.uuid4().hex[:6]}"
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        reply = await client.post("/jobs", json={"specs": [{
            "template": TINY_GUEST.format(name=prefix), "count": MANY, "address": False}],
            "concurrency": 1})
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        with anyio.fail_after(30):   # until the first guest is through
            while (await client.get(f"/jobs/{job_id}")).json()["progress"]["done"] < 1:
                await asyncio.sleep(0.01)
        cancelled = await client.post(f"/jobs/{job_id}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["cancel_requested"] is True
        job = await wait_for_job(client, job_id)
        assert job["state"] == "cancelled"
        report = job["report"]
        assert report["cancelled"] is True and report["ok"] is False
        counts = report["counts"]
        assert counts.get("started", 0) >= 1 and counts.get("cancelled", 0) >= 1
        assert sum(counts.values()) == MANY and set(counts) <= {"started", "defined",
                                                               "cancelled"}
        made = {g["name"] for g in report["guests"] if g["exists"]}
        assert made == {n for n in await names_on(holder) if n.startswith(prefix)}
        removed = (await client.delete(f"/jobs/{job_id}/guests")).json()
        assert removed["counts"] == {"removed": len(made)}
        assert not any(n.startswith(prefix) for n in await names_on(holder))


async def test_finished_jobs_beyond_keep_jobs_are_dropped_earliest_finished_first(
        profiles_dir, test_uri, holder):
    """With ``keep_jobs=2``: a running job is never dropped, the job that finished first
    goes (not the one started first), and a dropped job's 404 says what became of it."""
    label = uuid.uuid4().hex[:8]
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False,
                     keep_jobs=2)

    async def start(name: str, count: int = 1) -> str:
        reply = await client.post("/jobs", json={"specs": [{
            "template": TINY_GUEST.format(name=f"{name}-{label}"), "count": count,
            "name": f"{name}-{label}-{{n}}", "address": False, "labels": {"keep": label}}],
            "concurrency": 1})
        assert reply.status_code == 202, reply.text
        return reply.json()["id"]

    try:
        async with serving(app) as client:
            long = await start("long", MANY)   # runs while three short ones come and go
            short = []
            for name in ("b", "c", "d"):   # one after the other: they finish in this order
                short.append(await start(name))
                assert (await wait_for_job(client, short[-1]))["state"] == "done"
            assert (await client.get(f"/jobs/{long}")).json()["state"] == "running"
            gone = await client.get(f"/jobs/{short[0]}")
            assert gone.status_code == 404
            body = gone.json()
            assert body["dropped"] is True and body["state"] == "done"
            assert f"job {short[0]!r} finished (done) at " in body["error"]
            assert "keeps the 2 most recently finished jobs (aiovirt serve --keep-jobs)" \
                in body["error"]
            listed = [j["id"] for j in (await client.get("/jobs")).json()["jobs"]]
            assert listed == [long, *short[1:]]
            assert (await client.post(f"/jobs/{long}/cancel")).status_code == 202
            assert (await wait_for_job(client, long))["state"] == "cancelled"
            # the long job started first but finished last: the one that finished first goes
            assert (await client.get(f"/jobs/{short[1]}")).json()["dropped"] is True
            assert (await client.get(f"/jobs/{long}")).status_code == 200
            health = (await client.get("/health")).json()["jobs"]
            assert health["kept"] == 2 and health["keep"] == 2
            unknown = await client.get("/jobs/nosuch")
            assert unknown.status_code == 404 and "dropped" not in unknown.json()
            assert unknown.json()["error"].startswith("no job 'nosuch' on this server")
    finally:
        await teardown([test_uri], labels={"keep": label})


async def test_a_dropped_jobs_teardown_404_says_how_to_remove_its_guests(
        profiles_dir, test_uri, holder):
    """DELETE /jobs/ID/guests of a job beyond --keep-jobs is a 404 saying, as GET does, that
    it was dropped, and that POST /teardown by its run id still removes its guests."""
    label = uuid.uuid4().hex[:8]
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False,
                     keep_jobs=1)
    try:
        async with serving(app) as client:
            ids = []
            for name in ("first", "second"):   # the second to finish drops the first
                reply = await client.post("/jobs", json={"specs": [{
                    "template": TINY_GUEST.format(name=f"{name}-{label}"), "count": 1,
                    "address": False, "labels": {"dropped": label}}]})
                ids.append(reply.json()["id"])
                assert (await wait_for_job(client, ids[-1]))["state"] == "done"
            gone = await client.delete(f"/jobs/{ids[0]}/guests")
            assert gone.status_code == 404
            body = gone.json()
            told = (await client.get(f"/jobs/{ids[0]}")).json()["error"]
            assert body["error"].startswith(told)   # the registry's words, then the way out
            assert body["dropped"] is True and body["state"] == "done"
            assert f'POST /teardown {{"run": "{ids[0]}"}} still removes its guests' \
                in body["error"]
            assert f"first-{label}" in await names_on(holder)   # a 404 removed nothing
            removed = await client.post("/teardown", json={"run": ids[0]})
            assert removed.json()["counts"] == {"removed": 1}
            assert f"first-{label}" not in await names_on(holder)
    finally:
        await teardown([test_uri], labels={"dropped": label})


@pytest.mark.parametrize("value, words", [
    ("0", "give at least 1 (jobs)"), ("-3", "give at least 1 (jobs)"),
    ("10001", "give at most 10000 (jobs)"), ("lots", "'lots' is not a number of jobs")])
def test_serve_refuses_a_keep_jobs_out_of_bounds(tmp_path, capsys, value, words):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--keep-jobs", value, "--profiles-dir", str(tmp_path)])
    assert exited.value.code == 2
    assert f"argument --keep-jobs: {words}" in capsys.readouterr().err
    for bad in (0, -3, 10_001):
        with pytest.raises(ValueError, match="keep from 1 to 10000 finished jobs"):
            create_app(profiles_dir=tmp_path, keep_jobs=bad)


@pytest.mark.parametrize("request_body, status, message", [
    ({"specs": [{"template": TEST_GUEST.format(name="ok")}, {"template": "x", "cuont": 2}]},
     422, "specs[1]: guest spec: unknown field 'cuont'"),
    ({"specs": [{"template": TEST_GUEST.format(name="z"), "count": 0}]}, 422,
     "count 0: give a whole number of at least 1"),
    ({"specs": [{"template": "<domain><name>a</name>"}]}, 422, "specs[0]: "),
    ({"specs": [{"template": BILLION_LAUGHS}]}, 422, "DOCTYPE is not accepted"),
    ({"specs": [{"template": TEST_GUEST.format(name="p"), "profiles": ["nosuch"]}]}, 422,
     "specs[0]: unknown profile 'nosuch'"),
    ({"specs": [{"template": TEST_GUEST.format(name="p"), "profiles": ["nfv-realtime"]}]},
     422, "needs parameter 'vcpu_cpus'"),
    ({"specs": [{"template": TEST_GUEST.format(name="d"), "count": 2, "name": "same"}]}, 422,
     "makes the same name for all 2 guests"),
    ({"specs": [{"template": TEST_GUEST.format(name="d"), "count": 2, "name": "d-{n}"},
                {"template": TEST_GUEST.format(name="d"), "name": "d-2"}]}, 422,
     "guest name 'd-2' comes twice"),
    ({"specs": [{"template": TEST_GUEST.format(name="q")}], "placement": "random"}, 422,
     "unknown placement 'random'"),
    ({"specs": [{"template": TEST_GUEST.format(name="q")}], "concurrency": 0}, 422,
     "concurrency: expected a whole number of at least 1"),
    ({"specs": [{"template": TEST_GUEST.format(name="q")}], "hosts": ["test:///default"]},
     403, "is not one of this server's hosts"),
    ({"specs": [{"template": TEST_GUEST.format(name="q"), "count": 5000},
                {"template": TEST_GUEST.format(name="r"), "count": 6000}]}, 422,
     "11000 guests in one job is over this server's limit of 10000"),
    ({"specs": []}, 422, "specs: expected a non-empty list"),
    ({"specs": [{"template": TEST_GUEST.format(name="t"), "address": {"placement": "zzz"}}]},
     422, "guest spec: address: "),   # was a 500
    ({"specs": [{"template": TEST_GUEST.format(name="t"), "start": "no"}]}, 422,
     "start is true or false"),       # was taken as true
    ({"spec": {}}, 422, "unknown field 'spec'"),
    ([1, 2], 422, "expected a JSON object, not list"),
])
async def test_invalid_job_is_refused_and_defines_nothing(profiles_dir, test_uri, holder,
                                                          request_body, status, message):
    before = await names_on(holder)
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        reply = await client.post("/jobs", json=request_body)
        assert reply.status_code == status, reply.text
        assert message in reply.json()["error"]
        assert (await client.get("/jobs")).json() == {"jobs": []}
    assert await names_on(holder) == before


@pytest.mark.parametrize("host, words", [
    ("test+ext:///default?command={script}", "the ext transport runs a local command"),
    ("test+ssh://h/default?command={script}", "command="),
    ("test+ssh://h/default?keyfile=/etc/shadow", "keyfile="),
    ("test+ssh://h/default?known_hosts=/etc/passwd", "known_hosts="),
    ("test+tls://h/default?pkipath=/root", "pkipath="),
    ("test:///default?socket=/run/other.sock", "socket="),
])
async def test_hosts_a_request_names_may_not_reach_local_programs_or_files(
        profiles_dir, test_uri, tmp_path, host, words):
    # with --allow-any-host, any client could make the server run a program of its choice
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    host = host.format(script=script)
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False,
                     allow_any_host=True)
    async with serving(app) as client:
        replies = [await client.get("/events", params={"uri": host}),
                   await client.post("/jobs", json={"hosts": [host], "specs": [
                       {"template": TEST_GUEST.format(name="x"), "address": False}]}),
                   await client.post("/teardown", json={"hosts": [host], "run": "r"})]
        for reply in replies:
            assert reply.status_code == 403, reply.text
            assert words in reply.json()["error"]
        assert (await client.get("/jobs")).json() == {"jobs": []}
        many = await client.post("/teardown", json={"hosts": [test_uri] * 65, "run": "r"})
        assert many.status_code == 422
        assert "65 hosts: one request may name at most 64" in many.json()["error"]
    assert not marker.exists()


async def test_teardown_by_run_and_labels(profiles_dir, test_uri, holder):
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    label = uuid.uuid4().hex[:8]
    async with serving(app) as client:
        refused = await client.post("/teardown", json={"hosts": [test_uri]})
        assert refused.status_code == 422 and "run, names or labels" in refused.json()["error"]
        reply = await client.post("/jobs", json={"specs": [{
            "template": TEST_GUEST.format(name=f"lab-{label}"), "count": 3, "start": False,
            "address": False, "labels": {"batch": label}}]})
        job = await wait_for_job(client, reply.json()["id"])
        assert job["report"]["counts"] == {"defined": 3}
        removed = await client.post("/teardown", json={"labels": {"batch": label}})
        assert removed.status_code == 200, removed.text
        assert removed.json()["counts"] == {"removed": 3}
    assert not any(label in n for n in await names_on(holder))


async def read_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """Server-sent events as (event, data) pairs, from the stream's lines."""
    event, data = None, []
    async for line in lines:
        if line == "":
            if event is not None:
                yield event, json.loads("\n".join(data))
            event, data = None, []
        elif line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])


async def test_event_stream_delivers_lifecycle_events(profiles_dir, test_uri, holder):
    name = f"events-{uuid.uuid4().hex[:6]}"
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        async with client.stream("GET", "/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"] == "text/event-stream"
            events = read_events(stream.aiter_lines())
            with anyio.fail_after(20):
                kind, data = await anext(events)
                assert (kind, data) == ("ready", {"hosts": [test_uri], "unreachable": {}})
                dom = await holder.define_xml(TEST_GUEST.format(name=name))
                await dom.start()
                seen = []
                async for kind, data in events:
                    if kind == "lifecycle" and data["name"] == name:
                        seen.append(data["event"])
                        if data["event"] == "started":
                            break
            assert seen == ["defined", "started"]
            assert data["uuid"] == dom.uuid and data["host"] == test_uri
            assert (await client.get("/health")).json()["event_streams"] == 1
        # the client left: the server notices and lets go of its subscription
        with anyio.fail_after(10):
            while (await client.get("/health")).json()["event_streams"] != 0:
                await asyncio.sleep(0.01)
        await dom.destroy()
        await dom.undefine()
        bad = await client.get("/events", params={"uri": "test:///default"})
        assert bad.status_code == 403



async def test_a_left_event_stream_lets_go_of_its_queue(test_uri):
    """Leaving ``listen`` closes both ends of the listener's queue: its receiving end was
    left to the collector (a ResourceWarning for every event stream served)."""
    hub = EventHub()
    async with hub.open():
        async with hub.listen([test_uri]) as (listener, failed):
            assert failed == {}
    with pytest.raises(anyio.ClosedResourceError):
        listener.receive.receive_nowait()


async def test_closing_streams_ends_them_with_a_farewell(profiles_dir, test_uri):
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        async with client.stream("GET", "/events") as stream:
            events = read_events(stream.aiter_lines())
            with anyio.fail_after(20):
                assert (await anext(events))[0] == "ready"
                app.close_streams()   # what `aiovirt serve` does as shutdown begins
                rest = [item async for item in events]   # the response ends
        assert rest == [("end", {"reason": "the server is shutting down"})]
        with anyio.fail_after(10):
            while (await client.get("/health")).json()["event_streams"] != 0:
                await asyncio.sleep(0.01)

async def test_shutdown_cancels_running_jobs_and_completes_reports(profiles_dir, test_uri,
                                                                  holder, caplog):
    caplog.set_level("WARNING", "aiovirt.service")
    prefix = f"shut-{uuid.uuid4().hex[:6]}"
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        reply = await client.post("/jobs", json={"specs": [{
            "template": TINY_GUEST.format(name=prefix), "count": MANY, "address": False}],
            "concurrency": 1})
        job_id = reply.json()["id"]
        with anyio.fail_after(30):
            while (await client.get(f"/jobs/{job_id}")).json()["progress"]["done"] < 1:
                await asyncio.sleep(0.01)
    job = app.service.jobs.get(job_id)   # the server has stopped
    assert job.state == "cancelled" and job.finished is not None
    report = job.run.report
    assert report.cancelled and all(g.final for g in report.results)
    assert report.counts().get("cancelled", 0) >= 1
    made = {g.name for g in report.results if g.exists}
    assert made == {n for n in await names_on(holder) if n.startswith(prefix)}
    # the report goes with the server: the log says what exists and how to remove it
    said = [r.getMessage() for r in caplog.records if job_id in r.getMessage()]
    assert len(said) == 1, said
    assert f"ended by shutdown (cancelled)" in said[0] and f"{len(made)} guests exist" in said[0]
    assert f"aiovirt teardown --run {job_id} -c {test_uri}" in said[0]
    assert (await teardown(test_uri, run=job_id)).counts() == {"removed": len(made)}


async def test_shutdown_stops_jobs_at_once_while_a_request_waits(profiles_dir, test_uri,
                                                                 holder):
    # jobs were cancelled only once every connection had drained (uvicorn's 5 s grace):
    # meanwhile they went on launching, and the waiting request was cut with a 500
    prefix = f"stop-{uuid.uuid4().hex[:6]}"
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    server = Server(uvicorn_config(app, port=0, log_level="warning"))
    task = asyncio.ensure_future(server.serve())
    with anyio.fail_after(15):
        while not server.started:
            await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        reply = await client.post("/jobs", json={"specs": [{
            "template": TINY_GUEST.format(name=prefix), "count": MANY, "address": False}],
            "concurrency": 1})
        job_id = reply.json()["id"]
        waiting = asyncio.ensure_future(client.get(f"/jobs/{job_id}", params={"wait": 60}))
        with anyio.fail_after(30):
            while (await client.get(f"/jobs/{job_id}")).json()["progress"]["done"] < 1 or \
                    not any(c.cycle is not None and not c.cycle.response_complete and
                            c.cycle.scope["query_string"] == b"wait=60"   # being waited
                            for c in server.server_state.connections):
                await asyncio.sleep(0.01)
        began = anyio.current_time()
        server.should_exit = True
        with anyio.fail_after(30):
            answer = await waiting
            await task
        took = anyio.current_time() - began
    assert answer.status_code == 200, answer.text
    assert answer.json()["cancel_requested"] is True
    assert took < 4, f"the shutdown took {took:.1f} s"   # under uvicorn's grace of 5 s
    report = app.service.jobs.get(job_id).run.report
    assert report.cancelled and report.counts()["cancelled"] > MANY // 2
    made = {g.name for g in report.results if g.exists}
    assert (await teardown(test_uri, run=job_id)).counts() == {"removed": len(made)}


@pytest.mark.kvm
async def test_kvm_job_starts_a_real_guest(daemon, profiles_dir):
    uri = daemon.uri("qemu", "/system")
    name = f"svc-kvm-{uuid.uuid4().hex[:6]}"
    template = (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory>"
                "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
                "<emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")
    app = create_app(hosts=[uri], profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        reply = await client.post("/jobs", json={"specs": [{"template": template}]})
        assert reply.status_code == 202, reply.text
        job = await wait_for_job(client, reply.json()["id"])
        assert job["report"]["counts"] == {"started": 1}, job["report"]
        assert daemon.virsh("domstate", name).strip() == "running"
        removed = await client.post("/teardown", json={"run": job["id"]})
        assert removed.json()["counts"] == {"removed": 1}
    assert name not in daemon.virsh("list", "--all", "--name").split()

