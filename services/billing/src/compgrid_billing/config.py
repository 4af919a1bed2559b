"""Settings of the billing service (environment prefix ``COMPGRID_BILLING_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import Environment, ServiceSettings


class Settings(ServiceSettings):
    """The billing service's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_BILLING_", extra="ignore")
    service_name = "billing"

    db_pool_size: int = Field(
        default=8, ge=1, le=100, description="most database connections the process opens"
    )

    admission_horizon_hours: int = Field(
        default=24,
        ge=1,
        le=24 * 366,
        description="a restarted instance is held for this many hours of its price "
        "(the inventory's setting of the same name; a new request says what it held)",
    )
    usage_batch_size: int = Field(default=512, ge=1, le=4096)
    projection_wait_s: float = Field(
        default=3.0,
        ge=0,
        le=30,
        description="an instance billing has not heard of yet is waited for this long before "
        "it is called unknown (the inventory's events arrive a moment after it answered)",
    )
    rating_interval_s: float = Field(
        default=60.0, gt=0, description="how often parked usage is tried again"
    )
    storage_accrual_after_s: float = Field(
        default=900.0,
        ge=0,
        description="an hour a stopped instance's disk existed in is charged this long after it "
        "ended (metering's hours of running instances come first)",
    )
    budget_refresh_s: float = Field(
        default=900.0,
        gt=0,
        description="how often every budget code is recomputed even without new charges "
        "(forecasts age, validity dates pass)",
    )
    forecast_window_days: int = Field(
        default=7, ge=1, le=90, description="the burn rate is what was spent over these days"
    )
    period_close_after_s: float = Field(
        default=3600.0,
        ge=0,
        description="a period can be invoiced this long after it ended (metering closes an "
        "hour some minutes after it ends)",
    )
    monthly_run: bool = Field(default=True, description="invoice each month on its own")
    monthly_run_after_h: float = Field(
        default=6.0, ge=0, le=24 * 27, description="the monthly run starts this long after a month"
    )
    schedule_check_s: float = Field(default=300.0, gt=0)
    invoice_prefix: str = Field(default="CG", pattern=r"^[A-Z0-9]{1,8}$")
    issuer_name: str = Field(default="CompGrid", max_length=200)
    invoice_batch: int = Field(
        default=500, ge=1, le=10_000, description="invoices issued per transaction"
    )
    delivery_interval_s: float = Field(default=2.0, gt=0, description="how often due sends go")
    delivery_batch: int = Field(default=20, ge=1, le=1000)
    delivery_retry_for_s: float = Field(
        default=27 * 3600.0, gt=0, description="a delivery is retried this long, then failed"
    )
    delivery_backoff_first_s: float = Field(default=30.0, gt=0)
    delivery_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    allow_http_webhooks: bool | None = Field(
        default=None, description="plain http endpoints (default: everywhere but production)"
    )

    allow_internal_webhooks: bool | None = Field(
        default=None,
        description="endpoints on loopback or private addresses (default: everywhere but "
        "production); link-local and cloud metadata addresses are refused everywhere",
    )

    @property
    def internal_webhooks_allowed(self) -> bool:
        """Whether an endpoint may be (or resolve to) an address off the public internet."""
        if self.allow_internal_webhooks is not None:
            return self.allow_internal_webhooks
        return self.environment is not Environment.PRODUCTION

    @property
    def http_webhooks_allowed(self) -> bool:
        """Whether an endpoint may be plain http."""
        if self.allow_http_webhooks is not None:
            return self.allow_http_webhooks
        return self.environment is not Environment.PRODUCTION
