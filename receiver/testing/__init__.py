"""Helpers for users' own tests: a fake MetaStudio job query API (``fake_metastudio``)."""
