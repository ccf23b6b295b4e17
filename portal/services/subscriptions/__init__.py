"""Subscriptions: plans (versioned like prices), plan changes with proration, and quotas.

The period invoice's plan lines (the fee in advance, overage in arrears) and the renewal are
made by the invoice run (invoicing.subscribed), which this package builds on."""
