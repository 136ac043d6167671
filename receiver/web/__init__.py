"""The web service around the intake: the app, the query API, the console, serving.

``runtime`` (what routes share while the app runs), ``app`` (``create_app(settings)``; the
lifespan owns the engine, writer and scheduler), ``api`` and ``api_v1`` (health, metrics, the
query API), ``openapi``, ``live`` (the event stream), ``serving`` (uvicorn, one process or N
workers) and ``console/`` (the web console).
"""
