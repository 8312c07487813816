"""Run an ASGI app under uvicorn in a background thread, for the demo, development and tests."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


class BackgroundServer:
    """An ASGI app served on 127.0.0.1 from a daemon thread. Port 0 picks a free port."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, name: str = "server", **config_options) -> None:  # type: ignore[no-untyped-def]
        self.name = name
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port = self._socket.getsockname()[1]
        options = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 2, **config_options}
        config = uvicorn.Config(app, **options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, name=name, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start on {self.url}; see the log above")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
