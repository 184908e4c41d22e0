"""Grading: the pytest plugin that runs a scenario's checks against each student's lab."""
