"""The auth service's request/reply operations (``rpc.auth.<operation>``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from pydantic import BaseModel

from compgrid_auth.use_cases import api_tokens, budget_codes, keys, passwords, projects, sessions
from compgrid_auth.use_cases import users as users_uc
from compgrid_auth.use_cases.audit import list_audit
from compgrid_auth.use_cases.deps import Deps
from compgrid_events import auth_api as api
from compgrid_runtime.rpc import RpcServer

UseCase = Callable[..., Awaitable[Any]]

PUBLIC: dict[str, tuple[UseCase, type[BaseModel]]] = {
    "login": (sessions.login, api.Login),
    "refresh": (sessions.refresh, api.Refresh),
    "logout": (sessions.logout, api.Refresh),
    "exchange_api_token": (sessions.exchange_api_token, api.ExchangeApiToken),
    "register": (users_uc.register, api.Register),
    "request_password_reset": (passwords.request_password_reset, api.RequestPasswordReset),
    "reset_password": (passwords.reset_password, api.ResetPassword),
    "accept_invitation": (passwords.accept_invitation, api.AcceptInvitation),
}

AUTHENTICATED: dict[str, tuple[UseCase, type[BaseModel] | None]] = {
    "me": (users_uc.get_me, None),
    "change_password": (passwords.change_password, api.ChangePassword),
    "users.create": (users_uc.create_user, api.CreateUser),
    "users.list": (users_uc.list_users, api.ListUsers),
    "users.disable": (partial(users_uc.set_disabled, disabled=True), api.UserRef),
    "users.enable": (partial(users_uc.set_disabled, disabled=False), api.UserRef),
    "settings.get": (users_uc.get_settings, None),
    "settings.update": (users_uc.update_settings, api.PlatformSettings),
    "projects.create": (projects.create_project, api.CreateProject),
    "projects.list": (projects.list_projects, api.ListProjects),
    "projects.get": (projects.get_project_detail, api.ProjectRef),
    "projects.add_member": (projects.add_member, api.AddMember),
    "projects.remove_member": (projects.remove_member, api.RemoveMember),
    "projects.invite": (projects.invite, api.Invite),
    "budget_codes.create": (budget_codes.create_budget_code, api.CreateBudgetCode),
    "budget_codes.update": (budget_codes.update_budget_code, api.UpdateBudgetCode),
    "budget_codes.list": (budget_codes.list_budget_codes, api.ListBudgetCodes),
    "budget_codes.get": (budget_codes.get_budget_code_detail, api.BudgetCodeRef),
    "api_tokens.create": (api_tokens.create_api_token, api.CreateApiToken),
    "api_tokens.list": (api_tokens.list_api_tokens, None),
    "api_tokens.revoke": (api_tokens.revoke_api_token, api.ApiTokenRef),
    "audit.list": (list_audit, api.ListAudit),
    "keys.rotate": (keys.rotate_keys, None),
}


def register_routes(rpc: RpcServer, deps: Deps) -> None:
    """Bind every operation to its use case with the service's ports."""
    for operation, (use_case, model) in PUBLIC.items():
        rpc.route(operation, partial(use_case, deps), model, public=True)
    for operation, (use_case, maybe_model) in AUTHENTICATED.items():
        rpc.route(operation, partial(use_case, deps), maybe_model)
