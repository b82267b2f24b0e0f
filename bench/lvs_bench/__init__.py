"""kube-lvs benchmark harness (issue 7).

Not an installed package: scripts run it with ``PYTHONPATH=bench`` (see
``bench/run.sh``). ``workload`` and ``report`` are pure and unit-tested;
``kernel`` runs inside the lab VM against a real IPVS kernel.
"""
