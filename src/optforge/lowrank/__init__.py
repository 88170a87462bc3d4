"""optforge.lowrank (see the open issues; nothing public yet)."""
