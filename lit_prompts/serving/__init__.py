"""Serving trained prompts over HTTP on one frozen backbone (``python -m lit_prompts serve``, LitServe)."""
