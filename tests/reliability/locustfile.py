"""Load for the reliability suite (locust, headless): POST /classify with KNOWACQ_LOAD_TEXTS texts (default 4)
of KNOWACQ_LOAD_WORDS words at most (default 16) per request.

KNOWACQ_LOAD_RATE: requests per second per user (0: as fast as each user can). Refusals (429, 503) and
other errors are reported as failures named by status, so the CSV tells them apart.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, constant, constant_throughput, task

RATE = float(os.environ.get("KNOWACQ_LOAD_RATE", "0"))
TEXTS = int(os.environ.get("KNOWACQ_LOAD_TEXTS", "4"))
MAX_WORDS = int(os.environ.get("KNOWACQ_LOAD_WORDS", "16"))
WORDS = ["great", "awful", "lovely", "dull", "the", "film", "was", "really", "quite", "story", "plot", "and"]


class Classifier(FastHttpUser):
    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)
    network_timeout = 30.0
    connection_timeout = 10.0

    @task
    def classify(self) -> None:
        texts = [" ".join(random.choices(WORDS, k=random.randint(3, MAX_WORDS))) for _ in range(TEXTS)]
        with self.client.post("/classify", json={"texts": texts}, catch_response=True) as response:
            if response.status_code == 200:
                response.success()
            else:
                response.failure(f"status {response.status_code}")
