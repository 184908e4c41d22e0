"""The lab's Celery app (monitoring-alerting scenario)."""
