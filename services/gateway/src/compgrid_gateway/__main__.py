"""``compgrid-gateway``: run the HTTP edge."""

import signal

import uvicorn

from compgrid_gateway.app import create_app
from compgrid_gateway.config import Settings
from compgrid_runtime.logs import configure_logging


def main() -> None:
    """Serve the API until SIGTERM or SIGINT, then exit 0 after a graceful shutdown."""
    settings = Settings()
    configure_logging("gateway", level=settings.log_level, json=settings.log_json)
    # uvicorn shuts down gracefully on these signals, then re-raises them to the handlers it
    # found; quiet handlers let the process end with status 0 like every other service.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.api_port,
        log_config=None,
        access_log=settings.access_log,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
    )


if __name__ == "__main__":
    main()
