"""The route handlers: profiles, compose, address, provisioning jobs, teardown, events.

Each takes a ``Request`` and returns a ``Response`` (or a ``StreamResponse`` for events);
failures are ``HTTPError``s whose message names what was wrong and where.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any


from .. import __version__
from ..address import (AddressError, Tunables, address_domain, device_from_dict,
                       machine_from_dict, place)
from ..compose import Library, Profile, compose
from ..compose.errors import (
    ComposeError,
    InvalidResult,
    ParameterError,
    ProfileConflict,
    ProfileSyntaxError,
    UnknownProfile,
)
from ..errors import XMLInputError
from ..provision import ProvisionError, teardown
from .events import stream_lifecycle_events
from .http import (
    XML_TYPES,
    HTTPError,
    Request,
    Response,
    StreamResponse,
    json_body,
    json_response,
    sse,
)
from .inputs import (ComposeInput, check_job, compose_input, job_input, query_tunables,
                     teardown_input, tunables)
from .jobs import Job, JobState, NotRunning, TooManyJobs
from .limits import busy
from .openapi import document
from .store import StoreError

if TYPE_CHECKING:
    from .app import Service

__all__ = ["Handlers", "compose_error", "profile_dict"]


def compose_error(exc: Exception) -> HTTPError:
    """The HTTP error for a failed composition or addressing (``exc`` names what/where)."""
    if isinstance(exc, UnknownProfile):
        return HTTPError(404, str(exc))
    if isinstance(exc, ProfileSyntaxError):
        return HTTPError(422, str(exc))
    if isinstance(exc, XMLInputError):
        return HTTPError(400, f"bad XML: {exc}")
    if isinstance(exc, ProfileConflict):
        return HTTPError(409, str(exc))
    if isinstance(exc, InvalidResult):
        return HTTPError(422, str(exc), extra={"violations": [
            {"profile": p, "path": path, "message": m} for p, path, m in exc.violations]})
    if isinstance(exc, (ParameterError, ComposeError, AddressError)):
        return HTTPError(422, str(exc))
    return HTTPError(422, f"invalid request: {exc}")


def profile_dict(profile: Profile, versions: list[str], origin: str, *,
                 detail: bool = False) -> dict[str, Any]:
    """A profile as JSON: what ``aiovirt profiles list --json`` shows; with ``detail`` also
    its relations, parameters and actions (``aiovirt profiles show``)."""
    data: dict[str, Any] = {
        "id": profile.id, "name": profile.name, "version": profile.version,
        "priority": profile.priority, "auto": profile.auto, "versions": versions,
        "description": profile.description, "origin": origin, "source": profile.source,
        "digest": profile.digest}
    if detail:
        data["line"] = profile.line
        data["requires"] = [str(r) for r in profile.requires]
        data["conflicts"] = [str(r) for r in profile.conflicts]
        data["params"] = [{"name": p.name, "type": p.type, "default": p.default,
                           "select": p.select, "required": p.default is None and
                           p.select is None, "description": p.description}
                          for p in profile.params]
        data["actions"] = [{"line": a.line, "action": a.describe(), "constraint": a.constraint}
                           for a in profile.actions()]
    return data


def _compose(given: ComposeInput, library: Library) -> Response:
    """Compose (in a worker thread): the response with the XML and the explain report."""
    try:
        result = compose(given.domain, given.profiles, params=given.params, caps=given.caps,
                         domcaps=given.domcaps, library=library, validate=given.validate,
                         upgrade=given.upgrade, record=given.record, address=given.address,
                         input_wins=given.input_wins, source=given.source)
    except (ComposeError, AddressError, ValueError) as exc:
        raise compose_error(exc) from None
    body = {"xml": result.xml, "explain": result.explain(), **result.to_dict()}
    if result.addressed is not None:
        body["devices"] = [d.to_dict() for d in result.addressed]
    return json_response(body)


def _address_xml(text: str, tuned: Tunables, policy: str) -> Response:
    """Address a domain XML (in a worker thread)."""
    try:
        result = address_domain(text, tuned, policy=policy, source="request body")
    except (AddressError, XMLInputError) as exc:
        raise compose_error(exc) from None
    return json_response({"xml": result.xml, "devices": [d.to_dict() for d in result.devices]})


class Handlers:
    """The handlers of one service (its profile store, jobs and host policy)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    # -- service --------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        service = self.service
        return json_response({"aiovirt": __version__, "hosts": list(service.policy.hosts),
                              "allow_any_host": service.policy.allow_any,
                              "profiles_dir": str(service.store.directory),
                              "jobs": {"running": len(service.jobs.running()),
                                       "kept": len(list(service.jobs)),
                                       "limit": service.jobs.max_running,
                                       "keep": service.jobs.keep},
                              "event_streams": service.streams.count,
                              "event_streams_limit": service.streams.limit,
                              "event_feeds": service.hub.listening(),
                              "work": {"workers": service.pool.workers,
                                       "running": service.pool.running,
                                       "waiting": service.pool.waiting,
                                       "queue": service.pool.queue}})

    async def openapi(self, request: Request) -> Response:
        return json_response(document())

    # -- profiles -------------------------------------------------------------------------------
    def _profile(self, profile: Profile, detail: bool = False) -> dict[str, Any]:
        store = self.service.store
        return profile_dict(profile, store.library.versions(profile.name),
                            store.origin(profile), detail=detail)

    async def profiles_list(self, request: Request) -> Response:
        origin = request.arg("origin")
        profiles = [self._profile(p) for p in self.service.store.library]
        if origin is not None:
            profiles = [p for p in profiles if p["origin"] == origin]
        return json_response({"profiles": profiles})

    async def profile_show(self, request: Request) -> Response:
        name = request.params["name"]
        version = request.arg("version")
        ref = name if version is None else f"{name}@{version}"
        try:
            profile = self.service.store.library.get(ref)
        except UnknownProfile as exc:
            raise HTTPError(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPError(404, f"unknown profile: {exc}") from None
        except ComposeError as exc:   # it extends a profile that is missing, or itself
            raise HTTPError(409, f"profile {ref} cannot be resolved: {exc}") from None
        return json_response(self._profile(profile, detail=True))

    async def profile_put(self, request: Request) -> Response:
        name = request.params["name"]
        request.require_type(*XML_TYPES)
        text = await request.text()
        try:
            profile, created = await self.service.store.put(name, text)
        except XMLInputError as exc:
            raise HTTPError(400, f"bad XML: {exc}") from None
        except StoreError as exc:
            raise HTTPError(exc.status, str(exc),
                            extra={"problems": exc.problems} if exc.problems else None
                            ) from None
        body = self._profile(self.service.store.library.get(profile.id), detail=True)
        return json_response(body, 201 if created else 200,
                             [("location", f"/profiles/{profile.name}?version="
                                           f"{profile.version}")])

    async def profile_delete(self, request: Request) -> Response:
        name = request.params["name"]
        try:
            removed = await self.service.store.delete(name, request.arg("version"))
        except StoreError as exc:
            raise HTTPError(exc.status, str(exc)) from None
        return json_response({"deleted": [p.id for p in removed]})

    # -- compose and address ----------------------------------------------------------------------
    # The work itself runs in the service's worker threads (``WorkPool``): it is CPU-bound,
    # and on the event loop it would delay every other request.
    async def compose(self, request: Request) -> Response:
        given = await compose_input(request)
        return await self.service.pool.run(_compose, given, self.service.store.library)

    async def address(self, request: Request) -> Response:
        kind = request.require_type("application/xml", "text/xml", "application/json")
        if kind != "application/json":
            text = await request.text()
            tuned = query_tunables(request)
            policy = request.arg("policy", "libvirt") or "libvirt"
            return await self.service.pool.run(_address_xml, text, tuned, policy)
        return await self.service.pool.run(self._address_json, await request.json_object())

    def _address_json(self, data: dict[str, Any]) -> Response:
        """``{"domain": XML, "tunables", "device_tunables", "policy"}`` or, without XML,
        ``{"machine", "devices", "tunables", "policy"}`` (``aiovirt address --devices-json``);
        runs in a worker thread."""
        try:
            return json_response(self._address_json_body(data))
        except (AddressError, XMLInputError) as exc:
            raise compose_error(exc) from None

    def _address_json_body(self, data: dict[str, Any]) -> dict[str, Any]:
        policy = data.get("policy", "libvirt")
        if not isinstance(policy, str):
            raise HTTPError(422, "policy: expected a string")
        tuned = tunables(data["tunables"], "tunables") if "tunables" in data else None
        if "domain" in data:
            unknown = set(data) - {"domain", "tunables", "device_tunables", "policy"}
            if unknown:
                raise HTTPError(422, f"request body: unknown fields {sorted(unknown)} (with "
                                     "'domain': tunables, device_tunables, policy)")
            if not isinstance(data["domain"], str):
                raise HTTPError(422, "domain: expected the domain XML as a string")
            per_device = data.get("device_tunables") or {}
            if not isinstance(per_device, dict) or \
                    not all(isinstance(v, dict) for v in per_device.values()):
                raise HTTPError(422, "device_tunables: expected an object of objects "
                                     '({"ua-net0": {"numa_node": 1}})')
            result = address_domain(data["domain"], tuned, policy=policy, source="domain",
                                    device_tunables=per_device)
            return {"xml": result.xml, "devices": [d.to_dict() for d in result.devices]}
        unknown = set(data) - {"machine", "devices", "tunables", "policy"}
        if unknown:
            raise HTTPError(422, f"request body: unknown fields {sorted(unknown)} (give "
                                 "'domain', or 'machine' and 'devices')")
        devices_data = data.get("devices", [])
        if not isinstance(devices_data, list):
            raise HTTPError(422, f"devices: expected a list of objects, not "
                                 f"{type(devices_data).__name__}")
        # the fields are checked where the library reads them: AddressError, a 422
        machine = machine_from_dict(data.get("machine", {}))
        devices = [device_from_dict(d, f"devices[{i}]") for i, d in enumerate(devices_data)]
        placed = place(machine, devices, tuned, policy=policy)
        return {"machine": {"arch": machine.arch, "machine": machine.machine},
                "devices": [d.to_dict() for d in placed]}

    # -- jobs -------------------------------------------------------------------------------------
    def _job(self, request: Request, dropped_hint: str = "") -> Job:
        """The job the path names; 404 if there is none (``dropped_hint`` ends the message
        for a job the registry dropped)."""
        jobs = self.service.jobs
        job_id = request.params["id"]
        job = jobs.get(job_id)
        if job is not None:
            return job
        dropped = jobs.dropped(job_id)
        if dropped is None:
            raise HTTPError(404, f"no job {job_id!r} on this server (never started here, or "
                                 "finished and dropped long ago)")
        ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(dropped.finished))
        raise HTTPError(404, f"job {job_id!r} finished ({dropped.state}) at {ended} and was "
                             f"dropped: this server keeps the {jobs.keep} most recently "
                             f"finished jobs (aiovirt serve --keep-jobs){dropped_hint}",
                        extra={"dropped": True, "state": str(dropped.state),
                               "finished": dropped.finished})

    async def jobs_create(self, request: Request) -> Response:
        data = await request.json_object()
        service = self.service
        try:   # before the specs are checked (that composes every one)
            service.jobs.check_room()
        except TooManyJobs as exc:
            raise busy(str(exc), retry_after=5) from None
        given = job_input(data, service.policy, service.store.library,
                          max_guests=service.config.max_guests)
        # composing every spec once: in a worker, as /compose does (it held the loop)
        given = await service.pool.run(check_job, given)
        job = Job(given.run, given.hosts)
        try:
            service.jobs.start(job)
        except NotRunning as exc:
            raise HTTPError(503, str(exc)) from None
        except TooManyJobs as exc:
            raise busy(str(exc), retry_after=5) from None
        return json_response({"id": job.id, "url": f"/jobs/{job.id}", "state": str(job.state),
                              "guests": job.run.progress.total}, 202,
                             [("location", f"/jobs/{job.id}")])

    async def jobs_list(self, request: Request) -> Response:
        return json_response({"jobs": [job.summary() for job in self.service.jobs]})

    async def job_get(self, request: Request) -> Response:
        """The job; ``?wait=SECONDS`` (at most 60) first waits for it to finish (a server
        that is stopping answers within a few seconds)."""
        job = self._job(request)
        wait = request.number("wait", 0, high=60) or 0
        if wait and job.state is JobState.RUNNING:
            await self.service.jobs.wait(job, wait)
        return Response(200, await self._job_body(job), [("content-type", "application/json")])

    async def _job_body(self, job: Job) -> bytes:
        """The job as JSON: a report may be megabytes, so it is encoded in a worker thread,
        unindented, and kept once the job has finished (until a teardown adds to it)."""
        if job.state is JobState.RUNNING:
            return await self.service.pool.run(partial(json_body, indent=None), job.to_dict())
        async with job.encoding:   # readers of a finished job share one encoding
            if job.cached is None or job.cached[0] != job.revision:
                revision = job.revision
                body = await self.service.pool.run(partial(json_body, indent=None),
                                                   job.to_dict())
                job.cached = (revision, body)
            return job.cached[1]

    async def job_cancel(self, request: Request) -> Response:
        job = self._job(request)
        if job.state is not JobState.RUNNING:
            raise HTTPError(409, f"job {job.id} is already {job.state}: nothing to cancel")
        self.service.jobs.cancel(job)
        return json_response({"id": job.id, "url": f"/jobs/{job.id}", "state": str(job.state),
                              "cancel_requested": True}, 202)

    async def job_teardown(self, request: Request) -> Response:
        """Remove the guests the job made (found by UUID and by its run id)."""
        run = json.dumps({"run": request.params["id"]})
        job = self._job(request, f"; POST /teardown {run} still removes its guests (with "
                                 "\"hosts\" if the job named its own)")
        if job.state is JobState.RUNNING:
            raise HTTPError(409, f"job {job.id} is still running: cancel it "
                                 f"(POST /jobs/{job.id}/cancel) or wait for it first")
        if job.tearing_down:
            raise HTTPError(409, f"a teardown of job {job.id} is under way: wait for it "
                                 f"(GET /jobs/{job.id} shows its result)")
        job.tearing_down = True
        try:
            result = await teardown(job.hosts, report=job.run.report)
        finally:
            job.tearing_down = False
        # a second teardown finds "not found" what the first removed: the record keeps both
        before = {(r["host"], r.get("uuid") or r["name"]): r
                  for r in (job.teardown or {}).get("guests", [])}
        answer = result.to_dict()
        for removal in answer["guests"]:
            key = (removal["host"], removal.get("uuid") or removal["name"])
            if not (removal["outcome"] == "not found" and key in before
                    and before[key]["outcome"] == "removed"):
                before[key] = removal
        job.teardown = {**answer, "guests": list(before.values()),
                        "counts": dict(Counter(r["outcome"] for r in before.values()))}
        job.revision += 1
        return json_response(answer)

    async def teardown(self, request: Request) -> Response:
        given = teardown_input(await request.json_object(), self.service.policy)
        try:
            result = await teardown(given.hosts, names=given.names, run=given.run,
                                    labels=given.labels)
        except ProvisionError as exc:
            raise HTTPError(422, str(exc)) from None
        return json_response(result.to_dict())

    # -- events -----------------------------------------------------------------------------------
    async def events(self, request: Request) -> StreamResponse:
        """Server-sent lifecycle events of the server's hosts (or ``?uri=``, repeatable)."""
        hosts = self.service.policy.choose(request.args("uri") or None, "uri")
        service = self.service
        if not service.hub.running:
            raise HTTPError(503, "event streams need the server's lifespan (startup not run, "
                                 "or shutting down)")
        release = service.streams.enter()   # 503 when --max-streams streams are open

        async def produce(write: Any) -> None:
            await stream_lifecycle_events(service.hub, hosts, write,
                                          keepalive=service.config.keepalive)

        return StreamResponse(produce, headers=[("content-type", "text/event-stream"),
                                                ("x-accel-buffering", "no")],
                              farewell=sse("end", {"reason": "the server is shutting down"}),
                              release=release)
