"""Console entry points (``llava-lite-train``, ``-generate``, ``-eval``, ``-chat``, ``-web``, ``-demo``);
``errors`` reports a user's mistake in one line for all of them."""
