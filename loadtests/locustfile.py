"""Load for any scenario without a locustfile of its own: the task mix of its scenario.yml ``load`` section.

Run by ``labkit load`` or by hand (``LABKIT_SCENARIO`` names the scenario)::

    LABKIT_SCENARIO=broker-durability \
    LABKIT_BROKER_URL=amqp://s01:PW@10.250.1.10:5672/lab \
    LABKIT_REDIS_BROKER_URL=redis://:PW@10.250.1.10:6379/1 \
    LABKIT_RESULT_BACKEND=redis://:PW@10.250.1.10:6379/0 \
    locust -f loadtests/locustfile.py --headless -u 4 -r 2 -t 20s
"""

import os

from loadtests.celery_user import user_class_for

ScenarioUser = user_class_for(os.environ["LABKIT_SCENARIO"], "ScenarioUser")
