"""The lab's Celery app (broker-durability scenario)."""
