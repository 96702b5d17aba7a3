"""Encryption of repository credentials at rest, with Fernet from ``cryptography``."""

from cryptography.fernet import Fernet, InvalidToken

from .errors import StorageUnavailable

#: Marks an encrypted value in the database; plain JSON never starts with it.
SEALED_PREFIX = "fernet:"


def generate_key():
    """Return a new random key for FUSELINE_BROKER_SECRET_KEY."""
    return Fernet.generate_key().decode()


def is_sealed(stored):
    """Tell whether a stored value was encrypted by a CredentialCipher."""
    return stored.startswith(SEALED_PREFIX)


class CredentialCipher:
    """Encrypt and decrypt credential blobs with one Fernet key."""

    def __init__(self, key):
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            # The message leaves the key out: it may be a real secret.
            raise ValueError(
                "FUSELINE_BROKER_SECRET_KEY is not a valid Fernet key (32 "
                "url-safe base64-encoded bytes); make one with: "
                "flask --app wsgi broker generate-key"
            ) from None

    def seal(self, text):
        """Return ``text`` encrypted, with the prefix that marks it."""
        return SEALED_PREFIX + self._fernet.encrypt(text.encode()).decode()

    def unseal(self, stored):
        """Return the plain text of a stored value, encrypted or not."""
        if not is_sealed(stored):
            return stored
        try:
            token = stored[len(SEALED_PREFIX) :].encode()
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise StorageUnavailable(
                "cannot decrypt repository credentials: FUSELINE_BROKER_SECRET_KEY "
                "is not the key they were encrypted with"
            ) from None
