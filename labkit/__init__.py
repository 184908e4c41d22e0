"""Celery Lab Kit: per-student Celery labs, provisioned, loaded and graded."""

__version__ = "0.1.0"
