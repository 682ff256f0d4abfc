"""Task queues run under ``opentelemetry-instrument``: every task execution is a workflow.

One ``BaseInstrumentor`` per framework, each with its own ``opentelemetry_instrumentor`` entry
point (``when_celery``, ``when_rq``, ...), so each is skipped when its framework is not
installed and can be switched off by name in ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``.
What they share (the task-to-workflow lifecycle, workflow ids, the task filter, fork
handling) is in ``tasks``. Nothing here imports a framework until its instrumentor runs.
"""
