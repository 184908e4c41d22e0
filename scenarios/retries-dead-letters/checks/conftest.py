"""Checks of the retries-dead-letters lab; the grading plugin supplies lab, host, host_for and grader.

pytest scenarios/retries-dead-letters/checks --cohort inventories/<cohort> [--student s01]
"""

pytest_plugins = ["grading.plugin"]
