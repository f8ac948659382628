"""What a process holds open (``Engine``), the collection handle, and the one write path.
Built on ports and core only; ``wiring`` hands it concrete backends."""
