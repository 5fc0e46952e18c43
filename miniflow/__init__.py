"""miniflow: one Kubernetes pod per task, DAGs in plain Python files."""
