"""Settings of the gateway (environment prefix ``COMPGRID_GATEWAY_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """The gateway's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_GATEWAY_", extra="ignore")
    service_name = "gateway"
    api_port: int = Field(default=8000, ge=0, le=65535)
    public_url: str = Field(
        default="", description="base URL people reach the API at (empty: from each request)"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed to call the API"
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    rpc_timeout_s: float = Field(default=5.0, gt=0, le=120)
    slow_rpc_timeout_s: float = Field(
        default=60.0, gt=0, le=900, description="billing runs and documents"
    )
    rate_limit_per_s: float = Field(
        default=50.0, gt=0, description="sustained requests per session (or client address)"
    )
    rate_limit_burst: int = Field(
        default=200,
        ge=1,
        description="requests a session may burst (rounded up to a whole second of the rate)",
    )
    rate_limit_prefix: str = Field(
        default="compgrid:gateway:rate", description="Redis keys of the shared rate limits"
    )
    idempotency_ttl_s: int = Field(default=86_400, ge=60, le=7 * 86_400)
    idempotency_prefix: str = "compgrid:gateway:idem:"
    sse_keepalive_s: float = Field(default=15.0, gt=0, le=300)
    streams_per_token: int = Field(default=10, ge=1, description="open event streams per token")
    streams_per_user: int = Field(default=20, ge=1, description="open event streams per user")
    streams_prefix: str = Field(
        default="compgrid:gateway:streams", description="Redis keys of the open streams"
    )
    access_log: bool = False
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses of reverse proxies whose X-Forwarded-For names the client",
    )
