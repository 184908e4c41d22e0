"""Checks of the broker-durability lab; the grading plugin supplies lab, host, host_for and grader.

pytest scenarios/broker-durability/checks --cohort inventories/<cohort> [--student s01]
"""

pytest_plugins = ["grading.plugin"]
