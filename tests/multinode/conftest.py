"""A real multi-node Ray cluster on this machine for the tests in this directory.

Kept apart from tests/integration: those share one single-node Ray in the pytest process, and a
process can hold one Ray connection. Here the pytest process never calls ``ray.init``: the
nodes are ``ray start`` processes (cluster.local_multinode), the app is deployed with the
``serve deploy`` CLI through the head's dashboard, and every Ray query runs in a subprocess
(``python -m cluster.cli status --json``), so this cluster cannot disturb any other.
"""

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def local_cluster():
    from cluster.local_multinode import LocalCluster, default_topology

    cluster = LocalCluster(default_topology(), include_dashboard=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()  # only the process groups this fixture started
