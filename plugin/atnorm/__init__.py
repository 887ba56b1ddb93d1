"""atnorm: validate and normalize IBM Cloud Activity Tracker events in a log-forwarding chain."""

__version__ = "0.1.0"
