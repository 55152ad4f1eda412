"""The REST service (``aiovirt serve``): a small raw ASGI application, run by uvicorn.

    from aiovirt.service import create_app
    app = create_app(hosts=["qemu:///system"], profiles_dir="/var/lib/aiovirt/profiles")
    # uvicorn.run(app, host="127.0.0.1", port=8080)

Profiles (list, show; put and delete application profiles, stored atomically), compose and
address (offline), provisioning jobs (start, progress, report, cancel, teardown), live
lifecycle events as server-sent events, and the OpenAPI document at ``/openapi.json``.
No web framework: routing, bodies and errors are in this package (``app``, ``http``,
``routing``), uvicorn only serves it.
"""

from .app import App, Service, ServiceConfig, create_app
from .http import HTTPError

__all__ = ["App", "HTTPError", "Service", "ServiceConfig", "create_app"]
