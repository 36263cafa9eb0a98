"""The task loop (``loop``) and the step loop (``fit``)."""
