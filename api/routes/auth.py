"""Accounts and access tokens."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form
from fastapi.security import OAuth2PasswordRequestForm
from starlette.concurrency import run_in_threadpool

from api import rate_limits
from api.deps import AuthAttempt, SettingsDep, TransactionDep
from api.errors import PROBLEMS, Unauthorized
from api.schemas.auth import RegisterRequest, TokenOut, UserOut
from api.schemas.base import NeverNull
from api.services import auth

router = APIRouter(prefix="/v1/auth", tags=["auth"], responses=PROBLEMS, dependencies=[AuthAttempt])


class SignInForm(OAuth2PasswordRequestForm):
    """The OAuth2 password form, documented as it is read: an empty form field counts as
    missing, so `username` and `password` have at least one character; and a form has no null,
    so `grant_type` is `password` or omitted, and the client's id and secret are strings."""

    def __init__(
        self,
        *,
        grant_type: Annotated[str, Form(pattern="^password$")] = "password",
        username: Annotated[str, Form(min_length=1)],
        password: Annotated[str, Form(min_length=1, json_schema_extra={"format": "password"})],
        scope: Annotated[str, Form()] = "",
        client_id: Annotated[str | None, Form(), NeverNull()] = None,
        client_secret: Annotated[
            str | None, Form(json_schema_extra={"format": "password"}), NeverNull()
        ] = None,
    ) -> None:
        super().__init__(
            grant_type=grant_type,
            username=username,
            password=password,
            scope=scope,
            client_id=client_id,
            client_secret=client_secret,
        )


@router.post("/register", status_code=201, response_model=UserOut)
def register(body: RegisterRequest, tx: TransactionDep) -> UserOut:
    """Create an account. The password is stored as an Argon2id hash."""
    return UserOut.model_validate(auth.register(tx.session, body))


@router.post("/token", response_model=TokenOut)
async def token(
    form: Annotated[SignInForm, Depends()],
    tx: TransactionDep,
    settings: SettingsDep,
) -> TokenOut:
    """Exchange username and password (OAuth2 password form) for a bearer JWT. An account
    with too many failed sign-ins lately answers 429, right password or not."""
    account = f"account:{form.username.lower()}"
    await rate_limits.refuse_if_spent(settings, "signin-failures", account)
    try:
        return await run_in_threadpool(
            auth.issue_token, tx.session, settings, form.username, form.password
        )
    except Unauthorized:
        await rate_limits.count(settings, "signin-failures", account)
        raise
