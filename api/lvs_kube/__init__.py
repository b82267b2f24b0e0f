"""Kubernetes API plumbing shared by the agent and the operator: the
list+watch informer (over watch streams, with backoff), status writes over
kept-alive connections, the status writer's threads. Unlike ``lvs_model``
(pure data and rules), this package talks to the API server."""
