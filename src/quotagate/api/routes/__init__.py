"""The endpoints, one module per concern; each exposes ``routes(gw) -> list[Route]``."""
