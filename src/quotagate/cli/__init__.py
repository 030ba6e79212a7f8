"""The `quotagate` command. Each module here that defines ``register(group)`` adds commands."""
