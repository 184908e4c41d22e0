"""Checks of the queue-segregation lab; the grading plugin supplies lab, host and host_for.

pytest scenarios/queue-segregation/checks --cohort inventories/demo [--student s01]
"""

pytest_plugins = ["grading.plugin"]
