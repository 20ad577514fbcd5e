"""The statecharts as data: shipped inside the package as ``tracker.statecharts``."""
