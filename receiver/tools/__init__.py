"""Tools users test with: ``sender`` (sign and deliver), ``replay``, ``simulate``, ``diagnose``.

They speak to a receiver over HTTP as MetaStudio would; none of them needs the web app.
"""
