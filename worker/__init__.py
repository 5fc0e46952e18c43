"""The pod-side program (`miniflow-worker`), installed under the unique import name `miniflow_worker`."""  # noqa: E501
