"""MetaStudio's callback protocol, pure: no web, no database, no I/O.

``signing`` (the MSS_A / MSS_A_HEAD canonical string, sign, verify), ``events`` (bytes to typed
events: the JSON string inside JSON, tolerant where the vendor is vague) and ``ids`` (the
spellings one MetaStudio id arrives in, and the key they share).
"""
