"""The local REST API under `<base_url>/parallalx/api/`: thin handlers over the DeviceManager.

Every method is `@web.authenticated` and `@authorized` (resource `parallalx`); XSRF is checked
by jupyter_server for cookie-authenticated requests. Errors are `{"error": message}` with a 4xx
status and never carry a traceback: a peer's name or a path from a request body must not turn
into an HTML page or leak server internals.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.utils import url_path_join
from tornado import web

from ..cluster.service import ClusterService
from ..devices import ApiError, DeviceManager
from ..environments.requirements import requirement_set
from ..environments.service import EnvironmentService
from ..pairing import parse_json, validate
from .dashboard_proxy import dashboard_handlers
from .job_registry import JobRegistry
from .job_spawner import JobSpawner
from .json_errors import JsonErrors

AUTH_RESOURCE = "parallalx"
API_PREFIX = "parallalx/api"
_ID = r"([A-Za-z0-9_\-]{1,64})"


class ParallalxHandler(JsonErrors, ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def manager(self) -> DeviceManager:
        return self.settings["parallalx_manager"]

    def raw_json(self) -> Any:
        """The request body as JSON (any shape); an empty body means {}. Parsed as strictly as
        the peer listener parses (UTF-8, no NaN/Infinity, no overflowing numbers, bounded
        nesting, no lone surrogates), because each of those would otherwise pass the field
        checks and fail later as a 500 (SQLite cannot store a lone surrogate, float() of a
        huge integer overflows)."""
        raw = self.request.body
        if not raw or not raw.strip():
            return {}
        return parse_json(raw)

    def json_body(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The request body as a JSON object checked against `spec`; empty body means {}."""
        return validate(self.raw_json(), spec, "body")

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class DeviceHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        refresh = self.get_query_argument("refresh", "false").lower() in ("1", "true", "yes")
        self.write_json(await self.manager.device_info(refresh=refresh))


def _choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise ApiError(400, f"{name} must be one of: {', '.join(allowed)}")
    return value


class RequestsHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        direction = _choice(
            "direction", self.get_query_argument("direction", None), ("incoming", "outgoing")
        )
        state = _choice("state", self.get_query_argument("state", None), (
            "open", "all", "pending", "accepted", "rejected", "expired", "superseded"
        ))
        self.write_json(await self.manager.list_requests(direction, state or "open"))


class RequestHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def get(self, request_id: str) -> None:
        self.write_json(await self.manager.get_request(request_id))


def _is_optional_str(v: Any) -> bool:
    return v is None or (isinstance(v, str) and len(v) <= 4096)


ACCEPT_SPEC = {
    "shown_hash": (_is_optional_str, False, "the request's shown_hash, to accept only that"),
    "kernel": (_is_optional_str, False, "a kernelspec name or null"),
    "ide": (_is_optional_str, False, "an IDE ID or null"),
    "note": (_is_optional_str, False, "a string or null"),
}
REJECT_SPEC = {"reason": (_is_optional_str, False, "a string or null")}


class AcceptHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def post(self, request_id: str) -> None:
        body = self.json_body(ACCEPT_SPEC)
        selection = {k: body.get(k) for k in ("kernel", "ide") if body.get(k)}
        if selection:
            # an unknown request is a 404 whatever the kernel: look it up before the kernel
            await self.manager.get_request(request_id)
            python = await self.settings["parallalx_environments"].resolve_python(selection)
            selection["python"] = python
        self.write_json(await self.manager.decide(request_id, True, selection,
                                                  expected_hash=body.get("shown_hash"),
                                                  reason=body.get("note")))


class RejectHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def post(self, request_id: str) -> None:
        body = self.json_body(REJECT_SPEC)
        self.write_json(await self.manager.decide(request_id, False, reason=body.get("reason")))


class DevicesHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(await self.manager.list_devices())


class PeerDeviceHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def get(self, device_id: str) -> None:
        self.write_json(await self.manager.get_device(device_id))


class RevokeHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def post(self, device_id: str) -> None:
        self.json_body({})  # no fields: refuse a body we would silently ignore
        self.write_json(await self.manager.revoke(device_id))


INVITATION_SPEC = {
    "url": (lambda v: isinstance(v, str) and 0 < len(v) <= 2048, True, "a peer URL"),
    "kind": (lambda v: v in ("invite", "offer"), False, "'invite' or 'offer'"),
    "asks": (lambda v: isinstance(v, dict), False, "an object"),
}


class InvitationsHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(INVITATION_SPEC)
        asks = body.get("asks")
        if isinstance(asks, dict) and isinstance(asks.get("requirements"), list):
            # what the peer would be asked to install, checked as `environment/check` does
            # (PEP 508, no pip options or URLs, no conflict with this device's torch): a
            # mistake here is the sender's 400, not an install failing on the peer later
            requirement_set([str(r) for r in asks["requirements"]])
        result = await self.manager.send_request(
            body["url"], body.get("kind", "invite"), body.get("asks")
        )
        self.write_json(result, 201)


class NearbyHandler(ParallalxHandler):
    """Devices announcing themselves on the local network (mDNS), this one excluded: where to
    send an invitation, not whom to trust (`paired` only says the ID is one paired here)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        discovery = self.settings.get("parallalx_discovery")
        rows = [dict(d) for d in discovery.nearby()] if discovery is not None else []
        paired = {d["id"] for d in await self.manager.store.list_devices()
                  if d.get("state") == "paired"}
        for row in rows:
            row["paired"] = row["id"] in paired
        self.write_json(rows)


class ClusterHandler(ParallalxHandler):
    """Cluster state: the scheduler this device runs as a main device, its workers by device,
    and the main devices this device serves as a worker."""

    @property
    def cluster(self) -> ClusterService:
        cluster = self.manager.cluster
        if cluster is None:
            raise ApiError(503, "the cluster is not available on this server")
        return cluster

    async def named(self, state: dict[str, Any]) -> dict[str, Any]:
        """Each worker with its device's name (this device's own, or the paired device's as
        it was accepted), so that the panel and the CLI name devices, not IDs or addresses."""
        names = {d["id"]: d["name"] for d in await self.manager.store.list_devices()}
        names[self.manager.identity.device_id] = self.manager.settings.device_name
        for worker in state["workers"]:
            worker["device_name"] = names.get(worker["device_id"])
        for refused in state.get("refused_joins", []):
            refused["device_name"] = names.get(refused["device_id"])
        for serving in state.get("serving", []):
            serving["main_name"] = names.get(serving["main_id"])
        return state

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(await self.named(self.cluster.state()))


ADD_SELF_SPEC = {
    "kernel": (_is_optional_str, False, "a kernelspec name or null"),
    "nthreads": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024,
                 False, "an integer 1-1024"),
}


class ClusterActionHandler(ClusterHandler):
    # POST only: the inherited state GET would be called with the action and fail (500)
    get = web.RequestHandler.get

    @web.authenticated
    @authorized
    async def post(self, action: str) -> None:
        if action == "start":
            self.json_body({})
            result = await self.cluster.start()
        elif action == "stop":
            self.json_body({})
            result = await self.cluster.stop()
        else:
            body = self.json_body(ADD_SELF_SPEC)
            python = await self.manager.resolve_python({"kernel": body.get("kernel")})
            result = await self.cluster.add_self(python, body.get("nthreads", 1))
        self.write_json(await self.named(result))


class ClusterRetryHandler(ClusterHandler):
    """The user's Retry on a failed or refused join to a main device this device serves."""

    get = web.RequestHandler.get

    @web.authenticated
    @authorized
    async def post(self, main_id: str) -> None:
        self.json_body({})
        cluster = self.cluster  # 503 first when this server runs no cluster
        await self.manager.retry_join(main_id)
        self.write_json(await self.named(cluster.state()))


class EnvironmentHandlerBase(ParallalxHandler):
    @property
    def environments(self) -> EnvironmentService:
        return self.settings["parallalx_environments"]

    async def python_for(self, body: dict[str, Any]) -> str:
        return await self.environments.resolve_python(body)


class KernelsHandler(EnvironmentHandlerBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        refresh = self.get_query_argument("refresh", "false").lower() in ("1", "true", "yes")
        self.write_json(await self.environments.kernels(refresh=refresh))


class IdesHandler(EnvironmentHandlerBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(await self.environments.ides())


ENVIRONMENT_SPEC = {
    "kernel": (_is_optional_str, False, "a kernelspec name or null"),
    "ide": (_is_optional_str, False, "an IDE ID or null"),
    "requirements": (
        lambda v: isinstance(v, list) and len(v) <= 200
        and all(isinstance(r, str) and 0 < len(r) <= 512 for r in v),
        False, "a list of PEP 508 requirement strings",
    ),
}


class EnvironmentActionHandler(EnvironmentHandlerBase):
    """check: what would be installed into the selected environment (this device's versions of
    the cluster-critical packages plus `requirements`); install: do it, with progress events."""

    @web.authenticated
    @authorized
    async def post(self, action: str) -> None:
        body = self.json_body(ENVIRONMENT_SPEC)
        python = await self.python_for(body)
        extra = body.get("requirements") or []
        if action == "check":
            result = await self.environments.check(python, extra)
        else:
            result = await self.environments.install(python, extra)
        self.write_json(result)


class JobsHandlerBase(ParallalxHandler):
    @property
    def jobs(self) -> JobRegistry:
        return self.settings["parallalx_jobs"]


class JobsHandler(JobsHandlerBase):
    """The job list (every workload, every surface); POST registers a job run by the caller."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(await self.jobs.list())

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.write_json(await self.jobs.register(self.raw_json()), 201)


class JobHandler(JobsHandlerBase):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.write_json(await self.jobs.get(job_id))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        await self.jobs.delete(job_id)
        self.set_status(204)
        self.finish()


class JobActionHandler(JobsHandlerBase):
    """progress: the job's owner reports (answer: whether to cancel); cancel: a user asks."""

    get = web.RequestHandler.get

    @web.authenticated
    @authorized
    async def post(self, job_id: str, action: str) -> None:
        if action == "progress":
            self.write_json(await self.jobs.update(job_id, self.raw_json()))
        else:
            self.json_body({})
            self.write_json(await self.jobs.cancel(job_id))


class WorkloadsHandler(ParallalxHandler):
    """Workloads installed in this server's environment (entry points), with their schemas."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        from ..workloads.registry import describe_all

        rows = await asyncio.get_running_loop().run_in_executor(None, describe_all)
        self.write_json(json.loads(json.dumps(rows, default=str)))


RUN_SPEC = {
    "params": (lambda v: isinstance(v, dict), False, "an object of parameters (JSON values; "
               "Python objects as 'package.module:attribute')"),
    "name": (_is_optional_str, False, "a string or null"),
    "scheduler": (lambda v: v is None or (isinstance(v, str) and 0 < len(v) <= 512), False,
                  "a Dask scheduler address or null"),
}


class WorkloadRunHandler(ParallalxHandler):
    """Start a workload as a job of this server (a child process that reports like any owner)."""

    @web.authenticated
    @authorized
    async def post(self, workload: str) -> None:
        body = self.json_body(RUN_SPEC)
        spawner: JobSpawner = self.settings["parallalx_spawner"]
        self.write_json(await spawner.run(workload, body), 202)


class OpenAPIHandler(ParallalxHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        text = resources.files("parallalx_jupyter").joinpath("openapi.json").read_text()
        self.set_header("Content-Type", "application/json")
        self.finish(text)


def route_table() -> list[tuple[str, type[ParallalxHandler]]]:
    """Relative routes; the app joins them under base_url. Tests enumerate this list so that a
    new route without auth fails CI."""
    return [
        (r"/device", DeviceHandler),
        (r"/requests", RequestsHandler),
        (rf"/requests/{_ID}", RequestHandler),
        (rf"/requests/{_ID}/accept", AcceptHandler),
        (rf"/requests/{_ID}/reject", RejectHandler),
        (r"/devices", DevicesHandler),
        (rf"/devices/{_ID}", PeerDeviceHandler),
        (rf"/devices/{_ID}/revoke", RevokeHandler),
        (r"/invitations", InvitationsHandler),
        (r"/nearby", NearbyHandler),
        (r"/kernels", KernelsHandler),
        (r"/ides", IdesHandler),
        (r"/environment/(check|install)", EnvironmentActionHandler),
        (r"/cluster", ClusterHandler),
        (r"/cluster/(start|stop|add-self)", ClusterActionHandler),
        (r"/cluster/serving/([A-Za-z0-9_-]{1,64})/retry", ClusterRetryHandler),
        (r"/workloads", WorkloadsHandler),
        (rf"/workloads/{_ID}/run", WorkloadRunHandler),
        (r"/jobs", JobsHandler),
        (rf"/jobs/{_ID}", JobHandler),
        (rf"/jobs/{_ID}/(progress|cancel)", JobActionHandler),
        (r"/openapi.json", OpenAPIHandler),
    ]


class UnknownRouteHandler(ParallalxHandler):
    """Any other path under the API: a JSON 404 (after auth), not Jupyter's HTML page."""

    @web.authenticated
    @authorized
    async def get(self, path: str) -> None:
        raise ApiError(404, f"no such API route: /{API_PREFIX}/{path[:200]}")

    post = put = patch = delete = get


def handlers() -> list[tuple[str, type]]:
    routes = [(url_path_join("/", API_PREFIX, path), cls) for path, cls in route_table()]
    # the Dask dashboard (HTML and websockets, outside the JSON API): server/dashboard_proxy.py
    return [*routes, (url_path_join("/", API_PREFIX, r"(.*)"), UnknownRouteHandler),
            *dashboard_handlers()]
