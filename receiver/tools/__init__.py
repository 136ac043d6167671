"""Tools users test with: ``sender`` (sign and deliver), ``replay``, ``simulate``, ``diagnose``.

They speak to a receiver over HTTP as MetaStudio would; none of them needs the web app. Each
larger tool is a main module with its parts beside it: ``replay`` (the run: sending, retries,
re-signing) with ``replay_records`` (what to send: an export or the store, filtered) and
``replay_plan`` (the dry run and the pace); ``simulate`` (one live job played against a receiver)
with ``simulate_plan`` (the steps and faults), ``simulate_registry`` (the job in the fake
MetaStudio) and ``simulate_report``; ``diagnose`` (which signing variant matches a captured
request) with ``diagnose_capture`` (reading the capture), ``diagnose_variants`` (the URL and key
mistakes to try) and ``diagnose_report`` (the hints and the printed report).
"""
