"""Locust load for Celery labs: a Locust user that publishes tasks and waits for results."""
