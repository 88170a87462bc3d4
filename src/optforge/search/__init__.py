"""optforge.search (see the open issues; nothing public yet)."""
