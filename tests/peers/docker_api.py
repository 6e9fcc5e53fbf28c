"""A fake Docker Engine API (paths under /v1.43) on 127.0.0.1 for the agent's Docker provisioner.

It serves `/info`, `/images/json`, `/containers/json` (with `all` and a `label` filter),
`/containers/create?name=`, `/containers/{id}/json`, `/containers/{id}/start` (204, or 304
when running) and `DELETE /containers/{id}` (`force`). Errors are JSON `{"message": ...}` with
Docker's status codes: 404 for an unknown image or container, 409 for a name in use.

No container runs anything. Starting one publishes port 22/tcp on the `sshd` peer's port, if
one is given, and emulates the image's entrypoint there: `SSH_AUTHORIZED_KEYS` become the
authorized keys and `SSH_HOST_ED25519_KEY` the host key. The message texts follow the Docker
Engine API reference (version 1.43) and were not compared with a real daemon.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

PREFIX = "/v1.43"
NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


class DockerApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class DockerApiServer:
    """The fake daemon; `url` is the agent's `docker_url`. `images` are the tags that exist.

    With `unix_path` it listens on that Unix socket, as the real daemon does, instead of TCP.
    """

    def __init__(self, *, images: tuple[str, ...] = ("cloudmarket/sshd:latest",), sshd=None, unix_path: str = ""):
        self.unix_path = unix_path
        self.images = list(images)
        self.sshd = sshd
        self.containers: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def __enter__(self) -> DockerApiServer:
        handler = _make_handler(self)
        if self.unix_path:
            self._httpd = _ThreadingUnixHTTPServer(self.unix_path, handler)
        else:
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="fake-docker", daemon=True).start()
        logger.info("Fake Docker Engine API listening on %s", self.url)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        if self.unix_path:
            return f"unix://{self.unix_path}"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def reset(self) -> None:
        with self._lock:
            self.containers.clear()
            self.requests.clear()

    def add_container_behind_back(self, *, name: str, labels: dict[str, str]) -> str:
        with self._lock:
            return self._create({"Image": self.images[0], "Labels": labels}, name)["Id"]

    # --- request handling ----------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, path))
            if method == "GET" and path == "/info":
                return 200, {"NCPU": 8, "MemTotal": 32 * 1024**3, "Containers": len(self.containers)}
            if method == "GET" and path == "/images/json":
                return 200, [{"Id": f"sha256:{index:064x}", "RepoTags": [tag]} for index, tag in enumerate(self.images)]
            if method == "GET" and path == "/containers/json":
                return 200, self._list(query)
            if method == "POST" and path == "/containers/create":
                name = (query.get("name") or [""])[0]
                return 201, {"Id": self._create(body or {}, name)["Id"], "Warnings": []}
            match = re.fullmatch(r"/containers/([^/]+)(/json|/start)?", path)
            if match:
                container = self._find(unquote(match[1]))
                if method == "GET" and match[2] == "/json":
                    return 200, container
                if method == "POST" and match[2] == "/start":
                    return self._start(container)
                if method == "DELETE" and match[2] is None:
                    if container["State"]["Running"] and (query.get("force") or ["0"])[0] not in ("1", "true"):
                        raise DockerApiError(409, f"cannot remove container {container['Name']}: container is running")
                    del self.containers[container["Id"]]
                    return 204, None
            raise DockerApiError(404, f"page not found: {method} {path}")

    def _list(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        filters = json.loads((query.get("filters") or ["{}"])[0])
        wanted = filters.get("label", [])
        show_all = (query.get("all") or ["0"])[0] in ("1", "true")
        result = []
        for container in self.containers.values():
            labels = container["Config"]["Labels"]
            if not show_all and not container["State"]["Running"]:
                continue
            if any(label.split("=", 1)[0] not in labels for label in wanted):
                continue
            result.append({"Id": container["Id"], "Names": [container["Name"]], "Labels": labels})
        return result

    def _create(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        image = body.get("Image", "")
        if image not in self.images:
            raise DockerApiError(404, f"No such image: {image}")
        if name and not NAME_RE.match(name):
            raise DockerApiError(400, f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if name and any(container["Name"] == f"/{name}" for container in self.containers.values()):
            raise DockerApiError(409, f'Conflict. The container name "/{name}" is already in use by container.')
        container_id = secrets.token_hex(32)
        container = {
            "Id": container_id,
            "Name": f"/{name or container_id[:12]}",
            "Config": {"Image": image, "Env": body.get("Env", []), "Labels": body.get("Labels", {})},
            "HostConfig": body.get("HostConfig", {}),
            "State": {"Running": False, "Status": "created"},
            "NetworkSettings": {"Ports": {}},
        }
        self.containers[container_id] = container
        return container

    def _find(self, name_or_id: str) -> dict[str, Any]:
        for container in self.containers.values():
            if container["Id"] == name_or_id or container["Id"].startswith(name_or_id) or container["Name"] == f"/{name_or_id}":
                return container
        raise DockerApiError(404, f"No such container: {name_or_id}")

    def _start(self, container: dict[str, Any]) -> tuple[int, None]:
        if container["State"]["Running"]:
            return 304, None
        env = dict(item.split("=", 1) for item in container["Config"]["Env"] if "=" in item)
        port = "22"
        if self.sshd is not None:
            keys = [line for line in env.get("SSH_AUTHORIZED_KEYS", "").splitlines() if line.strip()]
            self.sshd.set_authorized_keys(keys)
            if env.get("SSH_HOST_ED25519_KEY"):
                self.sshd.install_host_key(env["SSH_HOST_ED25519_KEY"])
            port = str(self.sshd.port)
        container["State"] = {"Running": True, "Status": "running"}
        container["NetworkSettings"]["Ports"] = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": port}]}
        return 204, None


class _ThreadingUnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _make_handler(api: DockerApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            path = parts.path
            if not path.startswith(PREFIX):
                status, payload = 404, {"message": f"page not found: {path}"}
            else:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                    status, payload = api.handle(self.command, path[len(PREFIX):], parse_qs(parts.query), body)
                except DockerApiError as exc:
                    status, payload = exc.status, {"message": str(exc)}
                except json.JSONDecodeError as exc:
                    status, payload = 400, {"message": f"invalid JSON: {exc}"}
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            logger.debug("Fake Docker Engine API: %s", format % args)

    return Handler
