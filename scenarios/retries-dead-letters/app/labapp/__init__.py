"""The lab's Celery app (retries-dead-letters scenario)."""
