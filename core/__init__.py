"""The kernel every other package builds on, and that depends on none of them.

    core      the message envelopes, the error tree, rate limits, contact normalisation
    faq       matching questions to canned answers             (imports core)
    channels  platform adapters: verify, normalise, send        (imports core)
    bot       the service: queue, pipeline, desk, dashboard     (imports all of them)
"""
