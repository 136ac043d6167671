"""The callback path: HTTP in, verify, hand to the store, answer.

``limits`` (the uvicorn protocol: head size, slow clients), ``bodies`` (bounded body reads),
``receive`` (verify, then write: where signing and the store meet), ``endpoint``
(``POST /callbacks/{name}`` as plain ASGI, the hot path) and ``responses`` (errors to status
codes and ``{error_code, error_msg}`` bodies, for every route).
"""
