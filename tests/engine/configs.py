"""Small config documents for engine tests."""

PLAIN = """
opening_grant = false
[resources]
unit = 1
ai_chat_message = 1
premium_feature = 5
[tiers.free]
credit_limit = 100
monthly_grant = 100
[tiers.pro]
credit_limit = 1000
monthly_grant = 1000
renewal = "reset"
[tiers.limited]
credit_limit = 100
monthly_grant = 100
rate_limit = { requests_per_second = 0.01, burst = 40 }
"""
"""No opening grant, no rate limit on free/pro; `limited` admits a burst of 40, then 1 per 100 s."""
