"""The Claude layer shared by the teacher (data generation) and the judge (evaluation).

Modules, in the order a paid request passes through them: ``settings`` (one typed settings
dataclass), ``prices`` (usage, the price table per model id, cost, the hard budget),
``estimate`` (offline token counts for worst-case reservations), ``cache`` (the persistent
request cache and its key), ``client`` (one bounded call with the SDK's retries, the model
lifecycle check, :class:`~llava_lite.claude.client.PaysForMessages`), ``replies`` (stop
reasons, the forced tool call and its text fallback) and ``aio`` (running a coroutine from
synchronous code). Nothing here knows what a teacher or a judge asks.
"""
