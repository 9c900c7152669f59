"""dpt-live: DiffPoseTalk as a real-time streaming avatar driver."""

__version__ = "0.1.0"
