"""Load for the queue-segregation lab: producers publish to the heavy and light queues.

Run by ``labkit load`` or by hand::

    LABKIT_BROKER_URL=amqp://s01:PW@10.250.1.10:5672/lab \
    LABKIT_RESULT_BACKEND=redis://:PW@10.250.1.10:6379/0 \
    locust -f scenarios/queue-segregation/locustfile.py --headless -u 6 -r 3 -t 20s

The task mix (names, queues, weights, args) and the result timeout are the scenario's
``load`` section in scenario.yml.
"""

import os
from pathlib import Path

from loadtests.celery_user import user_class_for

SCENARIO = os.environ.get("LABKIT_SCENARIO") or Path(__file__).resolve().parent.name

QueueSegregationUser = user_class_for(SCENARIO, "QueueSegregationUser")
