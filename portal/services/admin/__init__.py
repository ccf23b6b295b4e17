"""The admin area's read side (the overview, every account's billing status) and the admin
actions that have no other home (a job run by hand)."""
