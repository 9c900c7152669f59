"""Live audio in, motion frames out: audio I/O, sources, windowing and the streaming engine."""
