"""The integration tests share one machine, and use it at once.

test_local_fleet walks one cohort through an instructor's day, one step after another, waiting on its hosts half of
the time (alone it left half of the 2 cores idle for 16 minutes); test_scenarios proves every scenario's graders on
cohorts of their own. So the scenarios' cohorts start in the background when the session starts, while the local-fleet
test runs in the foreground, and test_scenarios' tests collect their results at the end.

They share the machine's memory (labkit refuses a cohort whose hosts' memory limits do not fit beside the other
cohorts'): ``Machine`` keeps the account, and the local-fleet cohort's share is reserved before any scenario starts.
And only one cohort's fresh hosts are provisioned at a time (more booting at once starves ssh on 2 cores).
"""

from __future__ import annotations

import os
import threading

import pytest

from labkit.fleet import local_tf


class Machine:
    """Memory limits (MiB) claimed on this machine by the integration tests' cohorts, against what labkit allows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.claims: dict[str, int] = {}
        self.provisioning = threading.Lock()

    @staticmethod
    def budget_mib() -> int:
        return local_tf.memory_mib() - local_tf.RESERVE_MIB

    def claim(self, name: str, mib: int) -> bool:
        """Claim ``mib`` for ``name`` if it fits beside the other claims (or if nothing else is claimed: a cohort
        larger than the machine then meets labkit's own refusal rather than waiting for ever)."""
        with self._lock:
            others = sum(m for n, m in self.claims.items() if n != name)
            if others and others + mib > self.budget_mib():
                return False
            self.claims[name] = mib
            return True

    def release(self, name: str) -> None:
        with self._lock:
            self.claims.pop(name, None)


MACHINE = Machine()


@pytest.fixture(scope="session")
def machine() -> Machine:
    return MACHINE


def _module(session: pytest.Session, filename: str):
    return next((item.module for item in session.items if item.path.name == filename), None)


@pytest.fixture(scope="session", autouse=True)
def scenario_cohorts(request, tmp_path_factory, machine):
    """Start test_scenarios' cohorts in the background, if its tests were selected (after reserving the local-fleet
    cohort's memory, if that test was selected too); stop and sweep them at the end of the session."""
    scenarios = _module(request.session, "test_scenarios.py")
    fleet = _module(request.session, "test_local_fleet.py")
    if fleet is not None:
        machine.claim(fleet.COHORT, fleet.MEMORY_MIB)
    if scenarios is None or os.geteuid() != 0:
        yield None
        return
    cohorts = scenarios.Cohorts(tmp_path_factory.mktemp("scenarios"), machine)
    cohorts.start()
    try:
        yield cohorts
    finally:
        cohorts.close()
