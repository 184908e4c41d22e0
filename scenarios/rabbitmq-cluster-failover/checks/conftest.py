"""Checks of the rabbitmq-cluster-failover lab; the grading plugin supplies lab, host, host_for and grader.

pytest scenarios/rabbitmq-cluster-failover/checks --cohort inventories/<cohort> [--student s01]
"""

pytest_plugins = ["grading.plugin"]
