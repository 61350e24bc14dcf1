"""API tokens for machines: create (shown once), list, revoke."""

from fastapi import APIRouter, Response

from api.deps import CurrentUser, ListenerDep, SettingsDep, TransactionDep
from api.errors import PROBLEMS
from api.schemas.tokens import ApiTokenCreated, ApiTokenList, TokenCreate
from api.services import tokens

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], responses=PROBLEMS)


@router.post("", status_code=201, response_model=ApiTokenCreated)
def create_token(
    body: TokenCreate, tx: TransactionDep, user: CurrentUser, settings: SettingsDep
) -> ApiTokenCreated:
    """A new API token. The response is the only time the token is shown; Quern keeps a hash."""
    return tokens.create(tx.session, user, body, settings)


@router.get("", response_model=ApiTokenList)
def list_tokens(tx: TransactionDep, user: CurrentUser) -> ApiTokenList:
    """Your tokens that still work (not revoked, not expired), newest first."""
    return tokens.list_tokens(tx.session, user)


@router.delete("/{token_id}", status_code=204, response_class=Response)
def revoke_token(
    token_id: str, tx: TransactionDep, user: CurrentUser, listener: ListenerDep
) -> Response:
    """Revoke at once: the next request with it is 401."""
    tokens.revoke(tx.session, user, token_id)
    # Other processes hear the announcement; this one forgets before it answers.
    tx.after_commit.append(listener.principals.clear)
    return Response(status_code=204)
