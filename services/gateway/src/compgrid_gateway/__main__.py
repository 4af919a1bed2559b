"""``compgrid-gateway``: run the HTTP edge."""

import asyncio
import contextlib
import signal
import sys
from types import FrameType

import uvicorn

from compgrid_gateway.app import create_app
from compgrid_gateway.config import Settings
from compgrid_gateway.live import Hub
from compgrid_runtime.logs import configure_logging


class Server(uvicorn.Server):
    """uvicorn that ends the live event streams as soon as it is asked to stop: a stream never
    ends on its own, and uvicorn's graceful stop waits for every open response."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self._hub = hub

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop as uvicorn does, and end the open streams from the event loop."""
        super().handle_exit(sig, frame)
        with contextlib.suppress(RuntimeError):  # no loop yet: no stream is open
            asyncio.get_running_loop().call_soon_threadsafe(self._hub.end_streams)


def main() -> None:
    """Serve the API until SIGTERM or SIGINT, then exit 0 after a graceful shutdown."""
    settings = Settings()
    configure_logging("gateway", level=settings.log_level, json=settings.log_json)
    # uvicorn shuts down gracefully on these signals, then re-raises them to the handlers it
    # found; quiet handlers let the process end with status 0 like every other service.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.api_port,
        log_config=None,
        access_log=settings.access_log,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
    )
    server = Server(config, app.state.hub)
    server.run()
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the application did not start


if __name__ == "__main__":
    main()
