"""A fake of MetaStudio's job query API that the official SDK really talks to.

For the demo, ``simulate`` and tests (``receiver.testing`` exposes it to users): AK/SK and token
auth, paging, the document's error codes, injected faults.
"""
