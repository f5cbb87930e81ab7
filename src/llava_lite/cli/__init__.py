"""Console entry points (``llava-lite-train``, ``-generate``, ``-eval``, ``-chat``, ``-demo``)."""
