"""medsql: fine-tune sequence-to-sequence models that turn clinicians' questions into SQL."""

__version__ = "0.1.0"
