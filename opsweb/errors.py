"""The domain errors every layer shares: the policy raises them, services raise them, the admin
and commands turn them into a message. Imports nothing of opsweb."""


class ReleaseError(Exception):
    """A rule said no. The message is a sentence a person can act on."""


class NotAllowed(ReleaseError):
    """The user lacks the permission or group membership the action needs."""
