"""The service's OpenAPI 3.1 document, written by hand as a Python dict (served at
``/openapi.json``; a test checks that it and the routing table list the same operations)."""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__

__all__ = ["document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REASONS = {400: "malformed input: JSON or XML that does not parse, entities, a DOCTYPE",
            401: "missing or wrong bearer token", 403: "a host this server may not use",
            404: "no such profile, job or route (a finished job beyond --keep-jobs is "
                 "dropped: its 404 says so)", 405: "method not allowed here",
            409: "conflicts with the current state", 413: "request body over --max-body",
            415: "wrong Content-Type", 422: "invalid parameters, spec or profile",
            503: "at a limit (busy workers, --max-jobs, --max-streams; see Retry-After), "
                 "or the lifespan is not running"}


def _op(summary: str, responses: dict[str, Any], *, body: dict[str, Any] | None = None,
        parameters: list[dict[str, Any]] | None = None, errors: tuple[int, ...] = (),
        operation_id: str) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary,
                          "responses": dict(responses)}
    for code in (401, *errors):
        op["responses"][str(code)] = {"$ref": f"#/components/responses/E{code}"}
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
            "description": description}


_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_XML_BODY = {"application/xml": {"schema": {"type": "string",
                                            "description": "a domain XML document"}},
             "text/xml": {"schema": {"type": "string"}}}
_COMPOSE_QUERY = [
    {"name": "profile", "in": "query", "required": False, "style": "form", "explode": True,
     "schema": {"type": "array", "items": _STR}, "description": "NAME or NAME@VERSION to apply "
                                                                "(repeatable; XML bodies)"},
    {"name": "param", "in": "query", "required": False, "style": "form", "explode": True,
     "schema": {"type": "array", "items": _STR},
     "description": "NAME=VALUE or PROFILE.NAME=VALUE (repeatable; XML bodies)"},
    _query("address", _BOOL, "then assign controllers and addresses (XML bodies)"),
    _query("validate", _BOOL, "validate against libvirt's schema (default: when installed)"),
    _query("upgrade", _BOOL, "use the newest profile versions"),
    _query("record", _BOOL, "record the applied profiles in the metadata (default true)"),
    _query("input_wins", _BOOL, "aiovirt 0.1's rules: the input outranks profiles below "
                                "priority 99 (default false: profiles act on its values)"),
]
_TUNABLE_QUERY = [
    _query("reserve", {"type": "integer", "minimum": 0}, "free hot-pluggable places to keep"),
    _query("placement", {"enum": ["pci", "pcie"]}, "put devices on PCI or PCIe"),
    _query("pack", _BOOL, "pack function groups into one slot"),
]

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string", "description": "what was wrong and where"},
        "problems": {"type": "array", "items": _STR},
        "violations": {"type": "array", "items": {"type": "object"}}}},
    "Health": {"type": "object", "properties": {
        "aiovirt": _STR, "hosts": {"type": "array", "items": _STR}, "allow_any_host": _BOOL,
        "profiles_dir": _STR, "jobs": {"type": "object"}, "event_streams": {"type": "integer"},
        "event_streams_limit": {"type": "integer"},
        "event_feeds": {"type": "object", "additionalProperties": {"type": "integer"},
                        "description": "streams per host (one daemon connection each)"},
        "work": {"type": "object", "description": "compose/address worker threads: workers, "
                                                   "running, waiting, queue"}}},
    "Profile": {"type": "object", "required": ["id", "name", "version"], "properties": {
        "id": _STR, "name": _STR, "version": _STR, "priority": {"type": "integer"},
        "auto": _BOOL, "versions": {"type": "array", "items": _STR}, "description": _STR,
        "origin": {"enum": ["shipped", "system", "application", "string"]}, "source": _STR,
        "digest": _STR}},
    "ProfileDetail": {"allOf": [_ref("Profile"), {"type": "object", "properties": {
        "line": {"type": "integer"}, "requires": {"type": "array", "items": _STR},
        "conflicts": {"type": "array", "items": _STR},
        "params": {"type": "array", "items": {"type": "object", "properties": {
            "name": _STR, "type": {"enum": ["string", "int", "bool"]},
            "default": {"type": ["string", "null"]}, "select": {"type": ["string", "null"]},
            "required": _BOOL, "description": _STR}}},
        "actions": {"type": "array", "items": {"type": "object", "properties": {
            "line": {"type": "integer"}, "action": _STR, "constraint": _STR}}}}}]},
    "Tunables": {"type": "object", "additionalProperties": False, "properties": {
        "hotplug_reserve": {"type": "integer", "minimum": 0},
        "placement": {"enum": ["pci", "pcie", None]},
        "multifunction": {"enum": ["spread", "pack"]}}},
    "ComposeRequest": {"type": "object", "required": ["domain"], "additionalProperties": False,
                       "properties": {
        "domain": {"type": "string", "description": "domain XML, partial or complete"},
        "profiles": {"type": "array", "items": _STR}, "params": _STRMAP,
        "caps": {"type": "string", "description": "host capabilities XML"},
        "domcaps": {"type": "string", "description": "domain capabilities XML"},
        "address": {"oneOf": [_BOOL, _ref("Tunables")]},
        "validate": {"type": ["boolean", "null"]}, "upgrade": _BOOL, "record": _BOOL,
        "input_wins": {"type": "boolean", "description": "aiovirt 0.1's rules: the input "
                       "outranks profiles below priority 99 (default false)"}}},
    "ComposeResult": {"type": "object", "required": ["xml", "explain"], "properties": {
        "xml": _STR, "explain": {"type": "string", "description": "the report as text"},
        "applied": {"type": "array", "items": {"type": "object"}},
        "skipped": {"type": "array", "items": {"type": "object"}},
        "upgrades": {"type": "array", "items": {"type": "object"}},
        "changes": {"type": "array", "items": {"type": "object"}}, "validated": _BOOL,
        "devices": {"type": "array", "items": _ref("Device")}}},
    "Device": {"type": "object", "required": ["kind"], "properties": {
        "kind": _STR, "type": _STR, "model": _STR, "bus": _STR, "index": {"type": "integer"},
        "target": _STR, "name": _STR, "placement": _STR, "hotpluggable": _BOOL,
        "numa_node": {"type": "integer"}, "function_group": _STR, "options": {"type": "object"},
        "address": {"type": "object"}, "added": _BOOL}},
    "AddressRequest": {"oneOf": [
        {"type": "object", "required": ["domain"], "additionalProperties": False,
         "properties": {"domain": _STR, "tunables": _ref("Tunables"), "policy": _STR,
                        "device_tunables": {"type": "object", "additionalProperties": {
                            "type": "object"}}}},
        {"type": "object", "additionalProperties": False, "properties": {
            "machine": {"type": "object", "properties": {"arch": _STR, "machine": _STR}},
            "devices": {"type": "array", "items": _ref("Device")},
            "tunables": _ref("Tunables"), "policy": _STR}}]},
    "AddressResult": {"type": "object", "properties": {
        "xml": _STR, "machine": {"type": "object"},
        "devices": {"type": "array", "items": _ref("Device")}}},
    "GuestSpec": {"type": "object", "required": ["template"], "additionalProperties": False,
                  "properties": {
        "template": {"type": "string", "description": "domain XML, partial or complete"},
        "profiles": {"type": "array", "items": _STR}, "params": _STRMAP,
        "count": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "description": "pattern with {n}, {i}, {name}"},
        "first": {"type": "integer", "minimum": 0},
        "address": {"oneOf": [_BOOL, _ref("Tunables")]}, "start": _BOOL, "labels": _STRMAP}},
    "JobRequest": {"type": "object", "required": ["specs"], "additionalProperties": False,
                   "properties": {
        "specs": {"type": "array", "minItems": 1, "items": _ref("GuestSpec")},
        "hosts": {"type": "array", "items": _STR,
                  "description": "connection URIs (default: the server's --uri list)"},
        "placement": {"enum": ["capacity", "spread", "pack"]},
        "on_existing": {"enum": ["fail", "skip", "replace"]}, "rollback": _BOOL,
        "concurrency": {"type": ["integer", "null"], "minimum": 1},
        "start_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}}},
    "JobCreated": {"type": "object", "properties": {
        "id": _STR, "url": _STR, "state": _STR, "guests": {"type": "integer"}}},
    "Progress": {"type": "object", "description": "guests per stage, total and done",
                 "properties": {"total": {"type": "integer"}, "done": {"type": "integer"}},
                 "additionalProperties": {"type": "integer"}},
    "JobSummary": {"type": "object", "properties": {
        "id": _STR, "url": _STR, "state": {"enum": ["running", "done", "cancelled", "failed"]},
        "created": {"type": "number"}, "finished": {"type": ["number", "null"]},
        "hosts": {"type": "array", "items": _STR}, "progress": _ref("Progress")}},
    "Job": {"allOf": [_ref("JobSummary"), {"type": "object", "properties": {
        "cancel_requested": _BOOL, "error": _STR, "report": _ref("Report"),
        "teardown": _ref("TeardownReport")}}]},
    "Report": {"type": "object", "properties": {
        "run_id": _STR, "ok": _BOOL, "cancelled": _BOOL, "seconds": {"type": "number"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "hosts": {"type": "array", "items": {"type": "object"}},
        "notes": {"type": "array", "items": _STR},
        "guests": {"type": "array", "items": {"type": "object", "properties": {
            "name": _STR, "spec": {"type": "integer"}, "host": {"type": ["string", "null"]},
            "outcome": {"type": ["string", "null"]}, "stage": _STR,
            "exists": {"type": ["boolean", "null"]}, "uuid": {"type": ["string", "null"]},
            "error": _STR, "failed_at": _STR}}}}},
    "TeardownRequest": {"type": "object", "additionalProperties": False, "properties": {
        "hosts": {"type": "array", "items": _STR}, "run": _STR,
        "names": {"type": "array", "items": _STR}, "labels": _STRMAP,
        "include_foreign": {"const": False, "description": "true is refused (403): the "
                            "service removes only guests carrying aiovirt's metadata"}}},
    "TeardownReport": {"type": "object", "properties": {
        "ok": _BOOL, "counts": {"type": "object"}, "unreachable": _STRMAP,
        "guests": {"type": "array", "items": {"type": "object"}}}},
}

_PATHS: dict[str, Any] = {
    "/health": {"get": _op("The server's version, hosts and activity",
                           {"200": _json(_ref("Health"), "the server's state")},
                           operation_id="health")},
    "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"},
                                                                "the OpenAPI document")},
                                 operation_id="openapi")},
    "/profiles": {"get": _op(
        "List profiles (the current version of each name)",
        {"200": _json({"type": "object", "properties": {"profiles": {
            "type": "array", "items": _ref("Profile")}}}, "the profiles")},
        parameters=[_query("origin", {"enum": ["shipped", "system", "application"]},
                           "only profiles of this origin")], operation_id="listProfiles")},
    "/profiles/{name}": {
        "parameters": [_path("name", "profile name (or NAME@VERSION for GET)")],
        "get": _op("Show a profile: parameters, relations, actions",
                   {"200": _json(_ref("ProfileDetail"), "the profile")},
                   parameters=[_query("version", _STR, "a version other than the newest")],
                   errors=(404, 409), operation_id="showProfile"),
        "put": _op("Create or replace an application profile (stored atomically as "
                   "NAME@VERSION.xml in the profiles directory)",
                   {"200": _json(_ref("ProfileDetail"), "replaced"),
                    "201": _json(_ref("ProfileDetail"), "created")},
                   body={"required": True, "content": {
                       "application/xml": {"schema": {"type": "string", "description":
                                                      "one <profile name=NAME> document"}},
                       "text/xml": {"schema": {"type": "string"}}}},
                   errors=(400, 409, 413, 415, 422), operation_id="putProfile"),
        "delete": _op("Delete an application profile (every version, or ?version=)",
                      {"200": _json({"type": "object", "properties": {"deleted": {
                          "type": "array", "items": _STR}}}, "the ids removed")},
                      parameters=[_query("version", _STR, "only this version")],
                      errors=(404, 409, 422), operation_id="deleteProfile")},
    "/compose": {"post": _op(
        "Compose a domain XML from profiles: the XML and the explain report",
        {"200": _json(_ref("ComposeResult"), "the composed domain and the report")},
        body={"required": True, "content": {**_XML_BODY, "application/json": {
            "schema": _ref("ComposeRequest")}}},
        parameters=_COMPOSE_QUERY + _TUNABLE_QUERY,
        errors=(400, 404, 409, 413, 415, 422, 503), operation_id="compose")},
    "/address": {"post": _op(
        "Fill in controllers and device addresses, offline",
        {"200": _json(_ref("AddressResult"), "the addressed domain, or the placed devices")},
        body={"required": True, "content": {**_XML_BODY, "application/json": {
            "schema": _ref("AddressRequest")}}},
        parameters=_TUNABLE_QUERY + [_query("policy", _STR, "placement policy (libvirt)")],
        errors=(400, 413, 415, 422, 503), operation_id="address")},
    "/jobs": {
        "get": _op("List jobs (running and recently finished)",
                   {"200": _json({"type": "object", "properties": {"jobs": {
                       "type": "array", "items": _ref("JobSummary")}}}, "the jobs")},
                   operation_id="listJobs"),
        "post": _op("Start a provisioning job (checked whole first: nothing starts on error)",
                    {"202": _json(_ref("JobCreated"), "started; poll its url")},
                    body={"required": True, "content": {"application/json": {
                        "schema": _ref("JobRequest")}}},
                    errors=(400, 403, 413, 415, 422, 503), operation_id="startJob")},
    "/jobs/{id}": {
        "parameters": [_path("id", "job id (also the run id in each guest's metadata)")],
        "get": _op("A job's state, progress and report (live while running)",
                   {"200": _json(_ref("Job"), "the job")},
                   parameters=[_query("wait", {"type": "number", "minimum": 0, "maximum": 60},
                                      "first wait up to this many seconds for it to finish")],
                   errors=(404, 422), operation_id="getJob")},
    "/jobs/{id}/cancel": {
        "parameters": [_path("id", "job id")],
        "post": _op("Cancel a job: launch nothing more; calls already out finish",
                    {"202": _json(_ref("JobCreated"), "cancellation under way")},
                    errors=(404, 409), operation_id="cancelJob")},
    "/jobs/{id}/guests": {
        "parameters": [_path("id", "job id")],
        "delete": _op("Tear down the guests a finished job made",
                      {"200": _json(_ref("TeardownReport"), "what was removed")},
                      errors=(404, 409), operation_id="teardownJob")},
    "/teardown": {"post": _op(
        "Tear down guests by run id, name patterns and/or labels",
        {"200": _json(_ref("TeardownReport"), "what was removed")},
        body={"required": True, "content": {"application/json": {
            "schema": _ref("TeardownRequest")}}},
        errors=(400, 403, 413, 415, 422), operation_id="teardown")},
    "/events": {"get": _op(
        "Live domain lifecycle events as server-sent events: 'ready' once subscribed, then "
        "'lifecycle' ({host, name, uuid, event, detail}), 'error', 'end'",
        {"200": {"description": "an event stream", "content": {"text/event-stream": {
            "schema": {"type": "string"}}}}},
        parameters=[{"name": "uri", "in": "query", "required": False, "style": "form",
                     "explode": True, "schema": {"type": "array", "items": _STR},
                     "description": "hosts to watch (default: the server's --uri list)"}],
        errors=(403, 422, 503), operation_id="events")},
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "aiovirt", "version": __version__,
             "description": "Compose and address libvirt domain XML from profiles, and "
                            "provision guests on libvirt hosts."},
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "responses": {f"E{code}": _json(_ref("Error"), reason)
                      for code, reason in _REASONS.items()},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description":
                                       "needed when the server was given a token"}}},
    "security": [{"bearer": []}, {}],
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_DOCUMENT)


def operations(doc: dict[str, Any] | None = None) -> set[tuple[str, str]]:
    """Every (METHOD, path) the document describes."""
    doc = doc or _DOCUMENT
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method in item if method in ("get", "put", "post", "delete", "patch")}
