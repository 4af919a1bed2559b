"""Signing in, tokens and the caller's own account (``rpc.auth``)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from starlette.responses import Response

from compgrid_events import auth_api as api
from compgrid_gateway.backend import CtxDep
from compgrid_gateway.routes.common import created, json_response, no_content, problems

router = APIRouter(tags=["auth"], responses=problems())


@router.post("/auth/login", response_model=api.TokenPair)
async def login(ctx: CtxDep, body: api.Login) -> Response:
    """Sign in with email and password: a short-lived access token and a refresh token."""
    return json_response(await ctx.relay("auth", "login", body))


@router.post("/auth/refresh", response_model=api.TokenPair)
async def refresh(ctx: CtxDep, body: api.Refresh) -> Response:
    """Trade a refresh token for a new pair (the old refresh token stops working)."""
    return json_response(await ctx.relay("auth", "refresh", body))


@router.post("/auth/logout", status_code=204, response_class=Response)
async def logout(ctx: CtxDep, body: api.Refresh) -> Response:
    """Revoke a refresh token."""
    await ctx.ask("auth", "logout", body)
    return no_content()


@router.post("/auth/token", response_model=api.TokenPair)
async def exchange_api_token(ctx: CtxDep, body: api.ExchangeApiToken) -> Response:
    """Trade an API token (from ``POST /me/api-tokens``) for a short-lived access token."""
    return json_response(await ctx.relay("auth", "exchange_api_token", body))


@router.post("/auth/register", status_code=201, response_model=api.UserPublic)
async def register(request: Request, ctx: CtxDep, body: api.Register) -> Response:
    """Create one's own account, when an admin has switched self-registration on."""
    user = await ctx.ask("auth", "register", body)
    return created(request, user, f"/users/{user['id']}")


@router.post("/auth/password-reset", status_code=202, response_class=Response)
async def request_password_reset(ctx: CtxDep, body: api.RequestPasswordReset) -> Response:
    """Email a reset link (the answer is the same whether or not the account exists)."""
    await ctx.ask("auth", "request_password_reset", body)
    return Response(status_code=202)


@router.post("/auth/password-reset/confirm", status_code=204, response_class=Response)
async def reset_password(ctx: CtxDep, body: api.ResetPassword) -> Response:
    """Set a new password with the emailed token."""
    await ctx.ask("auth", "reset_password", body)
    return no_content()


@router.post("/auth/invitations/accept", status_code=204, response_class=Response)
async def accept_invitation(ctx: CtxDep, body: api.AcceptInvitation) -> Response:
    """Finish an invited account: name and password."""
    await ctx.ask("auth", "accept_invitation", body)
    return no_content()


@router.get("/me", response_model=api.Me)
async def me(ctx: CtxDep) -> Response:
    """The caller's account and project memberships."""
    return json_response(await ctx.relay("auth", "me"))


@router.post("/me/password", status_code=204, response_class=Response)
async def change_password(ctx: CtxDep, body: api.ChangePassword) -> Response:
    """Change one's own password (other sessions end)."""
    await ctx.ask("auth", "change_password", body)
    return no_content()


@router.get("/me/api-tokens", response_model=list[api.ApiTokenPublic])
async def list_api_tokens(ctx: CtxDep) -> Response:
    """The caller's API tokens (never their secrets)."""
    return json_response(await ctx.relay("auth", "api_tokens.list"))


@router.post("/me/api-tokens", status_code=201, response_model=api.ApiTokenCreated)
async def create_api_token(request: Request, ctx: CtxDep, body: api.CreateApiToken) -> Response:
    """A named token for scripts; the secret is in this answer only."""
    token = await ctx.ask("auth", "api_tokens.create", body)
    return created(request, token, f"/me/api-tokens/{token['id']}")


@router.delete("/me/api-tokens/{token_id}", response_model=api.ApiTokenPublic)
async def revoke_api_token(ctx: CtxDep, token_id: UUID) -> Response:
    """Revoke an API token at once."""
    return json_response(await ctx.relay("auth", "api_tokens.revoke", {"token_id": str(token_id)}))
