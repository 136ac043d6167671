"""The durable store: every delivery committed before it is answered, and read back.

``models`` and ``statuses`` (the tables), ``write`` (a delivery's rows and dedup key),
``writer`` (group commit, from the event loop), ``driver``/``process``/``child`` (the connection
that commits, in a writer process by default), ``queries`` and ``views`` (the read side),
``rejections`` (refused requests, masked), ``migrate`` (Alembic from code).

Importing this package loads nothing: the writer process imports ``receiver.store.child``
without SQLAlchemy.
"""
