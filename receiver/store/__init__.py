"""The durable store: every delivery committed before it is answered, and read back.

``models`` and ``statuses`` (the tables), ``incoming`` (a delivery and its dedup key), ``rows``
and ``write`` (its rows, and a batch of them committed), ``group_commit`` (batches, from the
event loop), ``driver``/``process``/``child`` (the connection that commits, in a writer process
by default), ``writer`` (opening the store: an engine, and the writer), ``queries``, ``paging``
and ``views`` (the read side), ``rejections`` (refused requests, masked), ``migrate`` (Alembic
from code), ``finding_log`` (finding changes, in order). Keeping it bounded: ``retention`` (the
policy and one prune), ``prune_rows`` (the rows of a chunk, archived then deleted),
``archives`` (the files), ``bounds`` (findings, snapshots, rejections; the store's size),
``prune_child`` (the server's prune, in a process of its own).

Importing this package loads nothing: the writer process imports ``receiver.store.child``
without SQLAlchemy.
"""
