"""Budget caps: a user's monthly cap on spending, warnings at 80 and 100 percent, and (when
the user chose "stop at the cap") the suspension of their deployments until the cap is
raised or a new billing period starts.

Its own package rather than part of standing/: a budget is a setting the user owns, with its
notices, mail and job, as quotas are to subscriptions/. Standing and can-deploy only read
what it defines (spending.py) in their one statement; the rules that act live in rules.py,
run by the "check-budgets" job (jobs.py) and right after the user saves a budget."""
