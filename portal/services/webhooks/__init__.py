"""Outgoing webhooks: the platform's endpoints (endpoints.py), the signature (signing.py)
and the delivery of the event outbox to them (delivery.py), with its jobs (jobs.py)."""
