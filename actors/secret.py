"""A string that never shows itself in reprs, logs or encoded settings."""

from __future__ import annotations

from typing import Any


class Secret:
    """A secret value; ``str``/``repr`` print asterisks. Call ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles config Structs to actors; the value must travel.
        return (Secret, (self._value,))


def secret_dec_hook(type_: type, obj: Any) -> Any:
    """msgspec ``dec_hook``: build a Secret from the plain string in a file or env var."""
    if type_ is Secret:
        if not isinstance(obj, str):
            raise TypeError("expected a string")
        return Secret(obj)
    raise NotImplementedError(f"unsupported type {type_!r}")


def secret_enc_hook(obj: Any) -> Any:
    """msgspec ``enc_hook``: secrets encode masked, so dumped settings never leak them."""
    if isinstance(obj, Secret):
        return str(obj)
    raise NotImplementedError(f"cannot encode {type(obj)!r}")
