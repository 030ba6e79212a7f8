"""Alerts: found off the charging path, kept in PostgreSQL, counted, logged, sent by webhook.

detect     what a flushed batch raises: balance thresholds, unusual consumption,
           monthly credits about to expire (called by the flush, never failing it)
rules      the rules' decisions, as plain functions
store      alerts written once each, with the deliveries of the endpoints subscribed
webhooks   endpoints, Standard Webhooks signatures, delivery with retries
"""
