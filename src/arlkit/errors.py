"""The one exception type for errors a user can cause (config, data, model path, tool call)."""


class ArlkitError(Exception):
    """A user-fixable error: the message says what was wrong and what to do."""
