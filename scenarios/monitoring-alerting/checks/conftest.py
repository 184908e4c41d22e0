"""Checks of the monitoring-alerting lab; the grading plugin supplies lab, host, host_for and grader.

pytest scenarios/monitoring-alerting/checks --cohort inventories/<cohort> [--student s01]
"""

pytest_plugins = ["grading.plugin"]
