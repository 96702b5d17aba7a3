"""Exceptions raised by the broker's storage and rules, under one base class."""


class BrokerError(Exception):
    """Base class of every error the broker raises on purpose."""


class NotFound(BrokerError):
    """A repository, worker, workflow, instance or step does not exist."""


class InvalidWorkflow(BrokerError):
    """A workflow definition breaks a structural rule."""


class DefinitionConflict(BrokerError):
    """A workflow id and version is already stored with another definition."""


class NotAssigned(BrokerError):
    """A worker reported a step that it never held."""


class StorageUnavailable(BrokerError):
    """The database cannot be read or written right now."""
