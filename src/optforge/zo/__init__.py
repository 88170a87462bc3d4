"""optforge.zo (see the open issues; nothing public yet)."""
