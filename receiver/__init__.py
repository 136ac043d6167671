"""metastudio-receiver: a durable, verifying receiver for MetaStudio livestream callbacks."""

__version__ = "0.1.0"
