"""The AWS fleet: preflight, dynamic inventory, tag-driven teardown and reaper.

Terraform (terraform/envs/aws + terraform/modules/lab_fleet_aws) makes the labs; this
package checks an account before anything is created and removes what a cohort left
behind using the kit's tags alone. Every resource the kit creates carries
``managed_by=labkit`` plus cohort, student, scenario, role and expires_at; nothing here
touches a resource without ``managed_by=labkit``.

boto3 reads ``AWS_ENDPOINT_URL`` like any other setting, which is how the tests point
it at moto_server; nothing in the package knows about moto.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO, TypeVar

MANAGED_BY_KEY = "managed_by"
MANAGED_BY_VALUE = "labkit"
KIT_TAG_KEYS = ("managed_by", "cohort", "student", "scenario", "role", "expires_at")

# Official Debian cloud images are published by this account.
DEBIAN_OWNER = "136693071363"
DEBIAN_SSH_USER = "admin"
# Debian names images debian-12-<arch>-<date>-<build>; EC2 calls the same architectures:
DEBIAN_ARCH = {"x86_64": "amd64", "arm64": "arm64"}

# AWS rejects more than 200 values in a filter (and most *Ids lists are capped too);
# the teardowns of other workshop tools broke above ~50 students on exactly that.
# Every list we send is cut into batches well under the limit.
BATCH_SIZE = 50

T = TypeVar("T")


def batches(items: Sequence[T], size: int = BATCH_SIZE) -> Iterator[list[T]]:
    """Yield ``items`` in lists of at most ``size``."""
    if size < 1:
        raise ValueError("batch size must be positive")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def cohort_filters(cohort: str) -> list[dict]:
    """EC2 filters selecting one cohort's kit-managed resources, and nothing else."""
    return [
        {"Name": f"tag:{MANAGED_BY_KEY}", "Values": [MANAGED_BY_VALUE]},
        {"Name": "tag:cohort", "Values": [cohort]},
    ]


def tag_dict(tags: list[dict] | None) -> dict[str, str]:
    """EC2's [{'Key': k, 'Value': v}] as a dict."""
    return {t["Key"]: t.get("Value", "") for t in tags or []}


def session_for(region: str | None = None):
    """A boto3 session for ``region`` (credentials from the usual chain)."""
    import boto3

    return boto3.Session(region_name=region)


def writer(out: Callable[[str], Any] | TextIO | None) -> Callable[[str], None]:
    """Messages go to a callable (the CLI's ``say``) or a text stream (tests, scripts)."""
    if out is None:
        return print
    if hasattr(out, "write"):
        return lambda text: print(text, file=out)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


# The engine interface labkit.cli calls for target aws (same as labkit.fleet.local_tf).
# Imported on call so `import labkit.aws` stays cheap and free of import cycles.


def up(roster, out=print, **kwargs):  # noqa: ANN001, ANN201 - see labkit.aws.cli.up
    from labkit.aws.cli import up as _up

    return _up(roster, out, **kwargs)


def down(roster, out=print, **kwargs):  # noqa: ANN001, ANN201 - see labkit.aws.cli.down
    from labkit.aws.cli import down as _down

    return _down(roster, out, **kwargs)


def status(roster, out=print, **kwargs):  # noqa: ANN001, ANN201 - see labkit.aws.cli.status
    from labkit.aws.cli import status as _status

    return _status(roster, out, **kwargs)


def cost_main(roster, price, **kwargs):  # noqa: ANN001, ANN201 - see labkit.aws.cli.cost_main
    from labkit.aws.cli import cost_main as _cost_main

    return _cost_main(roster, price, **kwargs)


def plan_main(roster, out=print, **kwargs):  # noqa: ANN001, ANN201 - see labkit.aws.cli.plan
    from labkit.aws.cli import plan as _plan

    return _plan(roster, out, **kwargs)


def reap_main(yes, **kwargs):  # noqa: ANN001, ANN201 - see labkit.aws.cli.reap_main
    from labkit.aws.cli import reap_main as _reap_main

    return _reap_main(yes, **kwargs)
