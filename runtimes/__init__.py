"""Runtime-agnostic inference sessions."""
