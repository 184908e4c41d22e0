"""The lab's Celery app (rabbitmq-cluster-failover scenario)."""
