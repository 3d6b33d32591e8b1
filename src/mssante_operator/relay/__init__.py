"""Outbound relay: the durable queue's retry schedule, routing, DSN generation and delivery workers."""
