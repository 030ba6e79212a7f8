"""The config the job tests share."""

FREE_AND_PRO = """
partitions = 4
[resources]
unit = 1
[tiers.free]
credit_limit = 100
monthly_grant = 100
[tiers.pro]
credit_limit = 1000
monthly_grant = 1000
renewal = "reset"
"""
"""Four partitions (a scan crosses several), no rate limits; ``pro`` renews by reset."""

HOLDS = """
partitions = 4
opening_grant = false
[resources]
unit = 1
[tiers.free]
credit_limit = 1000
monthly_grant = 100
[holds]
min_ttl_seconds = 1
"""
"""No opening grant, holds as short as a second: the expiry tests watch holds lapse."""
