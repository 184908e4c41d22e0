"""The lab's Celery app (queue-segregation scenario)."""
