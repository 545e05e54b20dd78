"""How the pipeline logs in to Snowflake: password, key pair, OAuth token or programmatic access
token, chosen explicitly by ``snowflake.auth`` (``SnowflakeConfig``).

``credential_kwargs(config)`` gives the ``snowflake.connector.connect`` keyword arguments of the
chosen method, and raises ``ConfigError`` naming the setting when its credential is missing or
unusable (a key that does not decrypt, a token file that cannot be read). No method falls back
to a default secret; only the local emulator (a loopback ``snowflake.host``), which checks no
credential, gets a fixed placeholder password when none is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from actors.exceptions import ConfigError

if TYPE_CHECKING:
    from actors.config import SnowflakeConfig

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
# The local emulator (fakesnow) takes any password; this one is not a secret of any account.
EMULATOR_PASSWORD: Final = "local-emulator"  # noqa: S105 - not a secret (see above)
# snowflake.auth -> the connector's ``authenticator``.
AUTHENTICATORS: Final = {"key_pair": "SNOWFLAKE_JWT", "oauth": "OAUTH",
                         "pat": "PROGRAMMATIC_ACCESS_TOKEN"}


def is_local_emulator(config: SnowflakeConfig) -> bool:
    return config.host is not None and config.host in LOOPBACK_HOSTS


def credential_kwargs(config: SnowflakeConfig) -> dict[str, Any]:
    """The login keyword arguments of ``config.auth``; ``ConfigError`` naming the setting when
    its credential is missing or unusable."""
    if config.auth == "password":
        if config.password is not None:
            return {"password": config.password.reveal()}
        if is_local_emulator(config):
            return {"password": EMULATOR_PASSWORD}
        raise ConfigError(
            f"snowflake.auth=password needs snowflake.password (account {config.account}); "
            "set EVENTRAY_SNOWFLAKE__PASSWORD from a secret, or choose snowflake.auth = "
            "key_pair, oauth or pat")
    if config.auth == "key_pair":
        return {"authenticator": AUTHENTICATORS["key_pair"], "private_key": private_key_der(config)}
    return {"authenticator": AUTHENTICATORS[config.auth], "token": _token(config)}


def private_key_der(config: SnowflakeConfig) -> bytes:
    """The PKCS#8 private key (``snowflake.private_key_file`` or the PEM in
    ``snowflake.private_key``), decrypted with ``snowflake.private_key_passphrase`` when it is
    encrypted, as unencrypted DER: what the connector signs its login JWT with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    if (config.private_key is None) == (config.private_key_file is None):
        raise ConfigError("snowflake.auth=key_pair needs exactly one of "
                          "snowflake.private_key_file and snowflake.private_key")
    if config.private_key is not None:
        setting, pem = "snowflake.private_key", config.private_key.reveal().encode()
    else:
        assert config.private_key_file is not None
        setting = "snowflake.private_key_file"
        try:
            pem = Path(config.private_key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{setting}={config.private_key_file}: cannot read it: "
                              f"{exc.strerror}") from None
    passphrase = (None if config.private_key_passphrase is None
                  else config.private_key_passphrase.reveal().encode())
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:  # encrypted without a passphrase, or a passphrase for a plain key
        state = "is encrypted: set" if passphrase is None else "is not encrypted: unset"
        raise ConfigError(f"{setting}: the key {state} "
                          "snowflake.private_key_passphrase") from None
    except ValueError:  # never the library's message: it could quote the key
        raise ConfigError(f"{setting}: not a PEM private key, or "
                          "snowflake.private_key_passphrase does not decrypt it") from None
    if not isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        raise ConfigError(f"{setting}: Snowflake key-pair authentication takes an RSA or EC key")
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _token(config: SnowflakeConfig) -> str:
    """``snowflake.token``, or the file ``snowflake.token_file`` read at each login (an
    identity provider or a Kubernetes Secret rotates it in place)."""
    name = f"snowflake.auth={config.auth}"
    if (config.token is None) == (config.token_file is None):
        raise ConfigError(f"{name} needs exactly one of snowflake.token and snowflake.token_file")
    if config.token is not None:
        return config.token.reveal()
    assert config.token_file is not None
    try:
        token = Path(config.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"snowflake.token_file={config.token_file}: cannot read it: "
                          f"{exc.strerror}") from None
    if not token:
        raise ConfigError(f"snowflake.token_file={config.token_file} is empty")
    return token
