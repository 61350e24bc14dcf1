"""Checks of an optional secret setting: empty (as compose passes an unset variable) means
unset, and a set one must be long enough to resist guessing. For the API's metrics token and
the key of signed URLs: `Annotated[SecretStr | None, EMPTY_IS_UNSET, at_least(NAME, N)]`."""

from pydantic import AfterValidator, BeforeValidator, SecretStr

EMPTY_IS_UNSET = BeforeValidator(lambda value: None if value == "" else value)


def at_least(name: str, min_chars: int) -> AfterValidator:
    """Refuses a secret `name` shorter than `min_chars` (the message names the setting)."""

    def long_enough(value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < min_chars:
            raise ValueError(f"{name} must be at least {min_chars} characters")
        return value

    return AfterValidator(long_enough)
