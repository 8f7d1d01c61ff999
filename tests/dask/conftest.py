"""A real two-process Dask cluster on 127.0.0.1 for the Dask accessor's tests, shared by the module that asks.

Workers are separate processes (1 thread each) that build their own engines from the
tiny model's folder, which they read from this machine's temporary directory.
"""

import pytest

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    with Client(cluster) as dask_client:
        yield dask_client
    cluster.close()
