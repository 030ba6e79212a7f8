"""Errors that only the HTTP layer raises, beside the tree in :mod:`quotagate.errors`.

    QuotagateError
    └── HttpError                      a request the gateway refuses before the engine sees it
        ├── Unauthorized               no API key, or one we do not know            (401)
        │   └── MissingAccountHeader   a hook request without X-Account-Id          (401)
        ├── Forbidden                  the key lacks the scope                      (403)
        ├── NotFound                   no such endpoint                             (404)
        ├── MethodNotAllowed           the endpoint exists, the method does not     (405)
        └── PayloadTooLarge            the body is above the cap                    (413)

This module imports nothing from the web framework, so the Python client can raise the same
classes.
"""

from __future__ import annotations

from quotagate.errors import QuotagateError


class HttpError(QuotagateError):
    """A request refused by the gateway itself."""

    code = "invalid_request"
    http_status = 400


class Unauthorized(HttpError):
    code = "unauthorized"
    http_status = 401


class MissingAccountHeader(Unauthorized):
    """The proxy named no account (``X-Account-Id``, identity mode ``header``): the same code
    as any 401, with a title of its own."""


class Forbidden(HttpError):
    code = "forbidden"
    http_status = 403


class NotFound(HttpError):
    code = "not_found"
    http_status = 404


class MethodNotAllowed(HttpError):
    code = "method_not_allowed"
    http_status = 405


class PayloadTooLarge(HttpError):
    code = "payload_too_large"
    http_status = 413
