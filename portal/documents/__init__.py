"""Documents rendered from plain-data snapshots (invoice PDFs)."""
