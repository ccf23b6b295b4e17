"""Account standing: one computed status per user (status), whether the user may deploy
more (candeploy), and the dunning of overdue invoices with weekly reminders (dunning, run by
the "dunning" job in jobs)."""
