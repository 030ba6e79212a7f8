"""The HTTP gateway: a thin Starlette app over the credit engine.

The app factory is :func:`quotagate.api.app.create_app`. This package's ``__init__`` imports
nothing, so that the client can use :mod:`quotagate.api.schemas` without the web framework.
"""
