"""A local Stripe-compatible stand-in for the demo and the tests (not part of the product).

It serves the `localstripe` package's fake Stripe API, plus what the portal needs that
localstripe lacks: Checkout Sessions (payment and setup mode) with hosted sandbox pages where
a person types a Stripe test card number, a sandbox "add card" page for SetupIntents, a
3-D Secure "authenticate" step, idempotency keys, payment intents listed by customer,
refund and dispute events, and webhook delivery signed like Stripe's (with retries).

It listens on 127.0.0.1 only. Run it with ``python -m standin --port 8420 --webhook-url
http://127.0.0.1:5000/api/plugins/billing/webhook --webhook-secret whsec_...`` (or the secret
in ``STANDIN_WEBHOOK_SECRET`` rather than on the command line).
"""
