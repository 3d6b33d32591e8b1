"""mssante-operator: an MSSanté operator mail server."""

__version__ = "0.1.0"
