"""Pure per-user logic: typed state, the fold (dedupe, lateness, windows, label join),
features and suppressions. Imports nothing but :mod:`schemas`."""
