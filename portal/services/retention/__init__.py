"""Keeping the big tables small to work with: monthly partitions of the usage rollups and the
ledger entries on PostgreSQL (``partitions``, created ahead by the daemon's
``create-partitions`` job) and the archive of a closed year (``archive``, `flask billing
archive`), which writes the year's rows to files and keeps per-account and per-deployment
totals so that reconcile and usage-audit still prove the books."""
