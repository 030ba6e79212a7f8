"""A seeded fault simulation of the whole system: gateways, workers, Redis and PostgreSQL as
real processes on loopback, driven through a random but reproducible mix of traffic and
faults, with a model of every acknowledged answer checked against Redis and the ledger.

``runner`` runs seeds, ``cluster`` starts and stops the processes, ``calls`` speaks HTTP,
``ops`` and ``faults`` are the steps, ``model`` what was acknowledged, ``checks`` the checks.
"""
